"""``edgekit bench``: latency, throughput, memory, size and accuracy of every artifact and of the
edge + cloud cascade, side by side with the teacher and an Optimum baseline, in one run.

Runs with only the ``runtime`` extra (a Raspberry Pi, a kiosk): the teacher and the Optimum
baseline rows need the ``convert`` extra and are left out, with a note, without it.
Nothing is imported here.
"""
