"""repgossip: personalized decentralized learning with shared representations."""

__version__ = "0.1.0"
