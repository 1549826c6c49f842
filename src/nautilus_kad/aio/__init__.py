"""The asyncio driver: real UDP sockets feeding the sans-I/O engine."""
