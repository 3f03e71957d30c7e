"""Model versions: the store on disk, the default build, promotion and rollback."""
