"""``python -m nautilus_kad.sim``: the simulator command on its own."""

from __future__ import annotations

from .command import sim_command

if __name__ == "__main__":
    sim_command(prog_name="python -m nautilus_kad.sim")
