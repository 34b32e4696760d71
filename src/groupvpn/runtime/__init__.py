"""asyncio drivers: sockets, timers, control socket, daemons."""
