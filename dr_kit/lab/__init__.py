"""The embedded lab: two sites on one machine, each reached through a kubeconfig context."""
