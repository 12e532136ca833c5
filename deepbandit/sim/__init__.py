"""The built-in simulator: an artwork world with a known ground truth (world.py), the logging policies that
explore it (logging_policies.py), and the writer of its logs in the contract's layout (simulator.py).

It sits beside ``deepbandit.data``, not inside it: real logs never need it, and it only uses the data
layer (the contract, the writers, the log readers)."""
