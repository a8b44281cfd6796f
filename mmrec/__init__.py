"""mmrec: cold-start item representations learned end-to-end from raw content on user activity."""
__version__ = "0.1.0"
