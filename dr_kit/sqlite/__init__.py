"""SQLite on the storage array: the array VFS for apsw and a DBAPI face for SQLAlchemy."""
