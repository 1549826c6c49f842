"""The simulator's adversary: hostile nodes, what they answer, and the scenario that scores them.

* :mod:`.nodes` turns a joined node hostile (the real engine with one decision overridden) and
  makes Sybil identities;
* :mod:`.answers` decides what hostile nodes answer (the behaviours and their conspiracy);
* :mod:`.scenario` runs lookups and gets against them, for d disjoint paths;
* :mod:`.scoring` scores each lookup and get against ground truth, ours and the paper's way;
* :mod:`.command` is the ``nautilus-kad sim-adversarial`` command that prints the table.
"""
