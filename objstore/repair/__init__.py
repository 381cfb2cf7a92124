"""The repair daemon (``daemon.py``): the reconstructor, the garbage collector and the rebalancer."""
