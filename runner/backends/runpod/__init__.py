"""RunPod as one package, one module per concern (the way SkyPilot keeps a cloud), on RunPod's REST API v2:

api.py            RunPod's REST API v2 (httpx + tenacity, typed with pydantic), errors sorted the way RunPod
                  says to act on them; logs as Server-Sent Events; the balance (GraphQL, until it is retired)
instances.py      the pod lifecycle: which API (real or the rehearsal's fake), stock and price, create,
                  wait until its bootstrap answers, stuck pods, terminate-and-verify, billed cost, leftovers
shipping.py       what travels to a pod: bootstrap and job in its environment (within RunPod's limits);
                  the script and local data uploaded to the pod's server
backend.py        the `runpod` backend: one pod per group of seed attempts (one, or `seeds_per_pod`), driven
                  from a Ray task on the driver's machine
bootstrap.py      the program that runs on the pod (standard library only; shipped in the pod's environment)
cluster.py        `pgolf cluster up|status|down|gc`
contract.py       RunPod's OpenAPI document (openapi-v2.json) as validators, for the fake
fake.py           the rehearsal's fake RunPod on 127.0.0.1 (`python -m runner.backends.runpod.fake`)
fake_container.py a fake pod's processes: init, log driver, tree kill
"""
