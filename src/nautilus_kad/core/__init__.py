"""The sans-I/O Kademlia engine.

Nothing in this package touches a socket, the clock or global randomness: time arrives as a
``now`` argument and randomness from an injected, seeded :class:`random.Random`. The asyncio
driver (:mod:`nautilus_kad.aio`) and the simulator (:mod:`nautilus_kad.sim`) both drive it.
"""
