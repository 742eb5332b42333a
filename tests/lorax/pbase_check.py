"""LoRAX's pbase lookup and s3 download, run by LoRAX's own functions against Quiver
(tests/lorax/pbase_check.sh sets the environment). Each adapter id is resolved by
`map_pbase_model_id_to_s3` and downloaded by `S3ModelSource.download_model_assets`, as LoRAX's
`download_adapter_weights` does; the files must be the uploaded fixtures byte for byte."""

import hashlib
import os
import pathlib
import sys

from lorax_server.utils.sources import S3, get_model_source, map_pbase_model_id_to_s3

FIXTURES = pathlib.Path("tests/fixtures/peft")
FILES = ["adapter_config.json", "adapter_model.safetensors"]
token = os.environ["QUIVER_TOKEN"]


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


failures = 0
# (adapter id as a LoRAX user writes it, the fixture it must be): alias, number, encoded slash,
# and no version (LoRAX's legacy lookup, at main).
for adapter_id, fixture in [
    ("alice--chat/prod", "plain_r8"),
    ("alice--chat/2", "rslora_r16"),
    ("alice%2Fchat/v1", "plain_r8"),
    ("alice--chat", "rslora_r16"),
]:
    path = map_pbase_model_id_to_s3(adapter_id, token)
    source = get_model_source(S3, path, extension=".safetensors")
    source.download_model_assets()
    local = source.get_local_path(path)
    names = sorted(p.name for p in local.iterdir())
    same = names == FILES and all(sha256(local / n) == sha256(FIXTURES / fixture / n) for n in FILES)
    print(f"{'ok  ' if same else 'FAIL'} {adapter_id} -> {path}: {names}")
    failures += not same

# Without access LoRAX's lookup fails (404 like a missing adapter; 401 for a bad token).
for bad in ["", "qvt_not_a_token"]:
    try:
        map_pbase_model_id_to_s3("alice--chat/1", bad)
        print(f"FAIL token {bad!r} resolved a private adapter")
        failures += 1
    except Exception as e:  # requests.HTTPError
        print(f"ok   token {bad!r} refused: {str(e)[:60]}")

sys.exit(1 if failures else 0)
