"""MongoDB adapters (beanie). Importing this package does not import beanie or pymongo."""

from crewflow.adapters.mongo.logstore import MongoLogStore, MongoTenantLogStore, collection_names

__all__ = ["MongoLogStore", "MongoTenantLogStore", "collection_names"]
