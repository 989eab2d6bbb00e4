"""RunPod as one package, one module per concern (the way SkyPilot keeps a cloud):

api.py        RunPod API calls (the official `runpod` client), sorted into the errors pgolf acts on
instances.py  the pod lifecycle: which API (real or fake), create, wait, terminate-and-verify, leftovers
backend.py    the `runpod` backend: one pod per seed attempt, driven from a Ray task on the driver's machine
bootstrap.py  the program that runs on the pod (standard library only; shipped in the pod's environment)
fake.py       the rehearsal's fake RunPod API on 127.0.0.1 (`python -m runner.backends.runpod.fake`)
cluster.py    `pgolf cluster up|status|down|gc`
"""
