"""The in-tree optimizers: each a module holding one ``OPTIMIZER`` record and the object it builds."""
