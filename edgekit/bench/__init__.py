"""``edgekit bench``: latency, throughput, memory, size and accuracy of every artifact and of the
edge + cloud cascade, side by side with the teacher and an Optimum baseline, in one run.

Runs with only the ``runtime`` extra (a Raspberry Pi, a kiosk): the teacher and the Optimum
baseline rows (``--teacher``) need the ``convert`` extra, and asking for them without it is an
error; ``--reference`` (the teacher's answers from an x86 run) gives agreement and cascade there.
Nothing is imported here.
"""
