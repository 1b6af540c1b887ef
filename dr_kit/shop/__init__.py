"""The shop: the business process the kit protects (brief section 4)."""
