"""Byte budgets of unverified addresses: a node is never an amplifier.

A UDP source address can be forged. Whoever forges a victim's address into a request makes
the node send its answer to the victim; if answers were larger than requests, the node would
multiply the attacker's bandwidth. So until an address has proved that it receives what we
send there (it answered a request of ours, echoing a random transaction id, or it talks to us
in a confirmed session), everything sent to it adds up to at most ``amplification_factor``
times the authenticated bytes that came from it (as QUIC does before address validation).

The budget is per address and cumulative: small answers leave credit for the verification
PING that follows. At most ``amplification_addresses`` addresses are tracked; forgetting one
(least recent first) resets both what it sent and what it received, so it never adds budget.
"""

from __future__ import annotations

from collections import OrderedDict

from .messages import Address


class AmplificationBudget:
    """Bytes received from and sent to each unverified address."""

    def __init__(self, factor: int, capacity: int) -> None:
        self.factor = factor
        self.capacity = capacity
        self._budget: OrderedDict[Address, int] = OrderedDict()
        """Bytes we may still send to each address."""

    def __len__(self) -> int:
        return len(self._budget)

    def __contains__(self, address: object) -> bool:
        return address in self._budget

    def received(self, address: Address, size: int) -> int:
        """``size`` authenticated bytes arrived from ``address``: returns its allowance."""
        budget = self._budget
        allowance = budget.pop(address, 0) + self.factor * size
        budget[address] = allowance
        if len(budget) > self.capacity:
            budget.popitem(last=False)
        return allowance

    def allowance(self, address: Address) -> int:
        """Bytes we may still send to ``address`` (0 for an address not tracked)."""
        return self._budget.get(address, 0)

    def spend(self, address: Address, size: int) -> None:
        """``size`` bytes went to ``address`` (a no-op for addresses not tracked)."""
        left = self._budget.get(address)
        if left is not None:
            self._budget[address] = left - size

    def verified(self, address: Address) -> None:
        """``address`` proved it receives what we send: no budget needed any more."""
        self._budget.pop(address, None)
