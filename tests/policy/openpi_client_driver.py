"""Run by the openpi-client virtualenv's python (not the project's): a robot stack's view of ``gwp serve``.

usage: python openpi_client_driver.py PORT OBS.npz OUT.npz

Only openpi_client and numpy are imported. Two clients connect; the first sends openpi's flat
keys, the second the nested form; the first then sends a malformed observation (a state of the
wrong size) and must get an error while the second, and then the first again, keep getting
actions. Everything seen is written to OUT.npz for the test to check.
"""

import json
import sys
import threading

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy

port, obs_path, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
data = np.load(obs_path)
roles = [k[len("image_") :] for k in data.files if k.startswith("image_")]
flat = {f"observation/{r}": data[f"image_{r}"] for r in roles}
flat |= {"observation/state": data["state"], "prompt": str(data["prompt"]), "seed": 0}
nested = {
    "images": {r: data[f"image_{r}"] for r in roles},
    "state": data["state"],
    "instruction": str(data["prompt"]),
    "seed": 0,
}

first = WebsocketClientPolicy("127.0.0.1", port)
second = WebsocketClientPolicy(f"ws://127.0.0.1:{port}")
out = {"metadata": json.dumps(first.get_server_metadata())}
reply = first.infer(flat)
out["flat"] = reply["actions"]
out["timing_keys"] = json.dumps(sorted(reply["server_timing"]))
out["nested"] = second.infer(nested)["actions"]
try:
    first.infer(dict(flat, **{"observation/state": np.zeros(len(data["state"]) + 1)}))
    out["error"] = ""
except RuntimeError as err:  # openpi's client raises on a text frame
    out["error"] = str(err)
out["second_after_error"] = second.infer(nested)["actions"]
out["first_after_error"] = first.infer(flat)["actions"]

# both clients at once: each gets its own answer
results = {}


def ask(name, client, obs):
    results[name] = client.infer(obs)["actions"]


threads = [
    threading.Thread(target=ask, args=("a", first, flat)),
    threading.Thread(target=ask, args=("b", second, dict(nested, seed=1))),
]
for t in threads:
    t.start()
for t in threads:
    t.join()
out["concurrent_seed0"], out["concurrent_seed1"] = results["a"], results["b"]
np.savez(out_path, **out)
