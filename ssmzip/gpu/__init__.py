"""GPU mode: the SSM of levels 7-9 on torch, many blocks advanced as one batch.

torch is an optional extra (``pip install ssmzip[gpu]``); nothing outside this
package imports it. The output is the CPU backend's, byte for byte.
"""
