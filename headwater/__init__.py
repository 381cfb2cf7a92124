"""Headwater: a self-hosted storage and CDN substrate for a video platform."""

__version__ = "0.1.0"
