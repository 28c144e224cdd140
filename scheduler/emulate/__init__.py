"""The ``emulate`` backend: the same experiment on the packet-level fabric.

It drives what runs elsewhere: the Mininet fabric (``topology.fabric``), the Ryu controller
(``controller``) and the host agents (``hosts``), and decides with the same dispatcher as the
simulator. Nothing in ``scheduler`` outside this package imports Mininet, the agents or the
controller; ``hosts`` (what runs inside an emulated GPU host) imports only the compute model
(``scheduler.model.instance``, ``scheduler.model.timing``) from here.
"""
