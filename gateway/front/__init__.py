"""The fast front: forwarded POST routes served straight off the socket; the rest to aiohttp."""
