#!/usr/bin/env python3
"""Generate float64 reference fixtures for Quiver's CPU merge engine.

This script is run BY HAND, never in CI. Its outputs are committed under
tests/fixtures/merge_reference/ so the Rust test suite (merge/tests/merge_reference.rs)
needs no Python at all. It needs numpy only (no torch, no PEFT, no safetensors package):
every merge method below is re-implemented here in float64 from the definitions in
/work/shared/reference/algorithms.md (sections 1.1-1.3 TIES / PEFT, 2 DARE) and
docs/merging.md (the engine's documented "paper" and "--compat peft" semantics), and DARE's
random masks are drawn by this script's own ChaCha8 (see "Random masks" below), never
exported from Rust.

What it writes
--------------
tests/fixtures/merge_reference/
  inputs/<name>/{adapter_config.json, adapter_model.safetensors}
      Four PEFT LoRA adapters (float32 factors, keys
      ``base_model.model.<module>.lora_{A,B}.weight``), of more than hand size:
        a: r=8, alpha=16,             q_proj (48x40), v_proj (64x24)
        b: r=8, alpha=8,  rsLoRA,     q_proj, v_proj, k_proj (32x40)
        c: r=8, alpha=32,             q_proj, k_proj
        d: r=4, alpha=4, rank_pattern {v_proj: 6}, alpha_pattern {v_proj: 3};
           q_proj, v_proj             (different ranks: paper cases only)
      so modules are present in only some inputs (an absent input does not vote)
      and the scales differ (alpha/r, alpha/sqrt(r), per-module patterns).
  <case>.safetensors, one per case:
      ``<module>.delta``            F64 [d_out, d_in]: the expected merged dense delta
                                    (scale 1), computed here in float64;
      ``<module>.keep.<tag>.<i>``   U8, the entries of input i's pruned tensor that the
                                    method keeps (1) or drops (0); tag ``delta`` (the
                                    input's dense s*B*A), ``A`` or ``B`` (PEFT's factor
                                    route). Written for every pruning method (magnitude
                                    and DARE).
  chacha8_stream.safetensors
      ``words.<seed>`` U32 [4096]: the first 4096 ``next_u32()`` words of
      ``rand_chacha::ChaCha8Rng::seed_from_u64(seed)`` as computed by this script, for a
      few seeds (the Rust test compares them with the real generator).
  cases.json
      the inputs, every case (its MergeSpec as JSON, ready for ``MergeSpec::from_json``,
      which inputs in which order, the route the engine takes, the margins checked
      below), the ChaCha8 key words per seed, and a table of derived seeds.

Routes (what the engine does for each case, so that B*A of its output must equal
the dense reference with no truncation error):
  * paper ``ties`` / ``dare_linear`` / ``dare_ties`` / ``magnitude_prune``: the dense
    route: combine the inputs' dense deltas entry-wise (tag ``delta``), then an exact
    SVD truncated to ``rank`` = 64 >= min(d_out, d_in) of every module, i.e. nothing is
    cut.
  * ``--compat peft`` ``dare_linear`` / ``dare_ties``: PEFT's factor route (no
    truncation): the method is applied to the A matrices (weights sign(c_i)*sqrt|c_i|,
    c_i = w_i*s_i, tag ``A``) and to the B matrices (weights sqrt|c_i|, tag ``B``)
    separately; the merged delta is B_new @ A_new (with cross terms).
  * ``--compat peft`` ``dare_linear_svd`` / ``dare_ties_svd``: PEFT's dense variants:
    the method on the dense deltas s_i*B_i*A_i with weights w_i (tag ``delta``), PEFT's
    unweighted sign election and count mean, then an exact SVD to ``rank`` = 64 (no cut).

Semantics implemented (docs/merging.md):
  paper:  magnitude trim keeps every entry with |x| >= the k-th largest |x|,
          k = floor(density * numel) per tensor (ties kept); DARE keeps an entry with
          probability density and divides the kept ones by density; the TIES sign is
          elected per entry from sum_i w_i*t_i ("total") or sum_i sign(w_i*t_i)
          ("frequency"), a zero sum electing +; the agreeing entries (sign(w_i*t_i) equal
          to the elected sign; zeros never agree) are averaged weighted by |w_i|, times
          lambda; no agreeing entry gives 0.
  peft:   magnitude trim keeps exactly k entries; the sign is elected on the unweighted
          pruned tensors (zero sum -> +); the mean is sum_i w_i*t_i*agree_i / max(1, count);
          no lambda.

Random masks (DARE): for each (module, input index i, tag) the engine uses the seed
    derive_seed(seed, module, i, tag) = first 8 bytes, little-endian, of
        sha256(f"{seed}\\0{module}\\0{i}\\0{tag}")
(seed and i in decimal, module without ``base_model.model.``; i is the input's index in
the merge's input list, whether or not the other inputs have the module), then
``ChaCha8Rng::seed_from_u64(that)`` and one ``next_u32()`` per entry of the tensor in
row-major order, keeping the entry when the word < floor(density * 2**32) (capped at
2**32 - 1); kept entries are multiplied by 1/density. ``seed_from_u64`` is rand_core
0.9's default (rand_chacha 0.9 does not override it): 8 PCG32 steps
    state = state * 6364136223846793005 + 11634580027462260723   (mod 2**64)
    x     = rotr32(((state >> 18) ^ state) >> 27 (low 32 bits), state >> 59)
give key words 0..7 (each written little-endian into the 32-byte seed, which ChaCha
reads back little-endian: key word j = the j-th x). The ChaCha8 state is the 4
constants "expand 32-byte k", the 8 key words, a 64-bit block counter in words 12 (low)
and 13 (high) starting at 0, and stream id 0 in words 14-15; 4 double rounds; output =
rounds + input; next_u32() word n = word (n mod 16) of block floor(n / 16). The Rust
test pins this against rand_chacha (chacha8_stream.safetensors), and this script checks
its ChaCha core against the RFC 7539 section 2.3.2 ChaCha20 block test vector.

Away from ties: the engine works in float32, this reference in float64, so an entry
whose classification (kept by the magnitude threshold or not, the sign of a DARE-kept
dense entry, the elected sign) could differ by float32 rounding would make the fixture
meaningless. For every case the script bounds float32's error (a dense entry of
s*B*A with inner size r: |err| <= 2*(r+2)*u*sum_k |s*b_k*a_k|, u = 2**-24; a sum of n
weighted entries: 2*(n+2)*u*sum|terms| plus the entries' own bounds) and asserts that
every such decision is farther from its boundary than that bound (margins are recorded
in cases.json). If a change of seeds breaks this, the script stops with a message.

How to run
----------
From the repository root, with numpy (any recent version; float64 and uint32 maths
only):

    python3 scripts/make_merge_reference_fixtures.py [OUT_DIR]

(default OUT_DIR: tests/fixtures/merge_reference). The output is deterministic.
"""

import hashlib
import json
import math
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "merge_reference"
BASE_MODEL_NAME = "quiver-test/merge-reference"
PREFIX = "base_model.model."

Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.0.self_attn.v_proj"
K = "model.layers.0.self_attn.k_proj"
SHAPES = {Q: (48, 40), V: (64, 24), K: (32, 40)}  # (d_out, d_in)

# name -> (seed of the factors, config)
INPUTS = {
    "a": (101, dict(r=8, lora_alpha=16, use_rslora=False, modules=[Q, V])),
    "b": (102, dict(r=8, lora_alpha=8, use_rslora=True, modules=[Q, V, K])),
    "c": (103, dict(r=8, lora_alpha=32, use_rslora=False, modules=[Q, K])),
    "d": (
        104,
        dict(
            r=4,
            lora_alpha=4,
            use_rslora=False,
            modules=[Q, V],
            rank_pattern={"v_proj": 6},
            alpha_pattern={"v_proj": 3},
        ),
    ),
}

# Untruncated: at least min(d_out, d_in) of every module.
FULL_RANK = 64
assert FULL_RANK >= max(min(s) for s in SHAPES.values())


def case(name, method, inputs, route, **spec):
    spec = {"method": method, **spec}
    return dict(case=name, inputs=inputs, route=route, spec=spec)


DENSE = "dense: entry-wise combination of the dense deltas s_i*B_i*A_i, then exact SVD to rank >= min(d_out, d_in) (untruncated)"
FACTOR = "peft factor route: the method on the A matrices and on the B matrices separately, merged delta = B_new @ A_new (untruncated)"

CASES = [
    case("paper_ties_d03", "ties", ["a", "b", "c", "d"], DENSE, density=0.3, rank=FULL_RANK),
    case(
        "paper_ties_d07_weighted_lambda",
        "ties",
        ["a", "b", "c"],
        DENSE,
        density=0.7,
        weights=[0.6, 1.3, 0.9],
        **{"lambda": 1.4},
        rank=FULL_RANK,
    ),
    case(
        "paper_ties_d05_frequency",
        "ties",
        ["a", "b", "c", "d"],
        DENSE,
        density=0.5,
        weights=[1.0, 0.8, 1.2, 0.7],
        majority_sign="frequency",
        rank=FULL_RANK,
    ),
    case(
        "paper_dare_linear",
        "dare_linear",
        ["a", "b", "c", "d"],
        DENSE,
        density=0.5,
        weights=[1.0, 0.7, 1.2, 0.5],
        seed=20240917,
        rank=FULL_RANK,
    ),
    case(
        "paper_dare_ties",
        "dare_ties",
        ["a", "b", "c"],
        DENSE,
        density=0.4,
        weights=[0.8, -0.5, 1.1],
        **{"lambda": 0.9},
        seed=(1 << 63) + 12345,
        rank=FULL_RANK,
    ),
    case(
        "paper_magnitude_prune",
        "magnitude_prune",
        ["a", "b", "d"],
        DENSE,
        density=0.3,
        weights=[1.0, 0.8, -0.6],
        rank=FULL_RANK,
    ),
    case(
        "peft_dare_linear",
        "dare_linear",
        ["a", "b", "c"],
        FACTOR,
        compat="peft",
        density=0.5,
        weights=[0.7, -0.4, 1.3],
        seed=7,
    ),
    case(
        "peft_dare_ties",
        "dare_ties",
        ["a", "b", "c"],
        FACTOR,
        compat="peft",
        density=0.6,
        weights=[1.0, 0.5, 0.8],
        seed=8,
    ),
    case(
        "peft_dare_ties_svd",
        "dare_ties_svd",
        ["a", "b", "c"],
        DENSE + ", PEFT semantics",
        compat="peft",
        density=0.5,
        weights=[0.7, -0.4, 1.3],
        seed=9,
        rank=FULL_RANK,
    ),
    case(
        "peft_dare_linear_svd",
        "dare_linear_svd",
        ["a", "b", "c"],
        DENSE + ", PEFT semantics",
        compat="peft",
        density=0.4,
        weights=[1.0, 0.6, -0.9],
        seed=10,
        rank=FULL_RANK,
    ),
]

# Seeds whose raw ChaCha8 stream is recorded; main() adds a derived seed that a case uses.
STREAM_SEEDS = [0, (1 << 64) - 1]
STREAM_WORDS = 4096

U32 = 0xFFFFFFFF
U64 = (1 << 64) - 1
UNIT = 2.0**-24  # float32 unit roundoff

# ------------------------------------------------------------- ChaCha8 ---

CHACHA_CONST = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]  # "expand 32-byte k"


def _rotl(v, n):
    return (v << np.uint32(n)) | (v >> np.uint32(32 - n))


def chacha_core(state: np.ndarray, double_rounds: int) -> np.ndarray:
    """ChaCha block function on 16 x N uint32 input states: rounds, then + input."""
    x = state.copy()

    def qr(a, b, c, d):
        x[a] += x[b]
        x[d] = _rotl(x[d] ^ x[a], 16)
        x[c] += x[d]
        x[b] = _rotl(x[b] ^ x[c], 12)
        x[a] += x[b]
        x[d] = _rotl(x[d] ^ x[a], 8)
        x[c] += x[d]
        x[b] = _rotl(x[b] ^ x[c], 7)

    for _ in range(double_rounds):
        qr(0, 4, 8, 12)
        qr(1, 5, 9, 13)
        qr(2, 6, 10, 14)
        qr(3, 7, 11, 15)
        qr(0, 5, 10, 15)
        qr(1, 6, 11, 12)
        qr(2, 7, 8, 13)
        qr(3, 4, 9, 14)
    return x + state  # uint32: wraps mod 2**32


def pcg32_key(seed: int) -> list:
    """rand_core 0.9 SeedableRng::seed_from_u64: the 8 key words of the 32-byte seed."""
    state = seed & U64
    words = []
    for _ in range(8):
        state = (state * 6364136223846793005 + 11634580027462260723) & U64
        xorshifted = (((state >> 18) ^ state) >> 27) & U32
        rot = state >> 59
        words.append(((xorshifted >> rot) | (xorshifted << ((32 - rot) & 31))) & U32)
    return words


def chacha8_stream(seed: int, n: int) -> np.ndarray:
    """The first n next_u32() words of ChaCha8Rng::seed_from_u64(seed) (stream 0)."""
    key = pcg32_key(seed)
    blocks = (n + 15) // 16
    counter = np.arange(blocks, dtype=np.uint64)
    state = np.empty((16, blocks), dtype=np.uint32)
    state[0:4] = np.array(CHACHA_CONST, dtype=np.uint32)[:, None]
    state[4:12] = np.array(key, dtype=np.uint32)[:, None]
    state[12] = (counter & np.uint64(U32)).astype(np.uint32)
    state[13] = (counter >> np.uint64(32)).astype(np.uint32)
    state[14] = 0
    state[15] = 0
    out = chacha_core(state, double_rounds=4)
    return out.T.reshape(-1)[:n]  # block after block, 16 words each


def chacha_self_test() -> None:
    """RFC 7539 section 2.3.2 (ChaCha20 block function) test vector: key 00..1f, block
    count 1, nonce 00:00:00:09:00:00:00:4a:00:00:00:00; same core, 10 double rounds."""
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a00000000")
    words = (
        CHACHA_CONST
        + list(struct.unpack("<8I", key))
        + [1]
        + list(struct.unpack("<3I", nonce))
    )
    out = chacha_core(np.array(words, dtype=np.uint32)[:, None], double_rounds=10)[:, 0]
    got = struct.pack("<16I", *[int(v) for v in out])
    want = bytes.fromhex(
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
    )
    assert got == want, f"ChaCha core fails the RFC 7539 test vector: {got.hex()}"


def derive_seed(seed: int, module: str, index: int, tag: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{module}\0{index}\0{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def dare_keep(seed: int, shape, density: float) -> np.ndarray:
    n = int(np.prod(shape))
    if density >= 1.0:
        return np.ones(shape, dtype=bool)
    cut = int(min(density * 4294967296.0, 4294967295.0))
    return (chacha8_stream(seed, n) < np.uint32(cut)).reshape(shape)


# ------------------------------------------------------------ methods ---
# Each pruned tensor carries a float32 error bound (`err`, same shape) next to its values.


def magnitude_keep(t: np.ndarray, err: np.ndarray, density: float, exact_k: bool):
    """Kept set of the magnitude trim, and the margin by which it is unambiguous in f32."""
    n = t.size
    k = math.floor(density * n)
    mag = np.abs(t).reshape(-1)
    e = err.reshape(-1)
    if k <= 0:
        return np.zeros(t.shape, dtype=bool), math.inf
    if k >= n:
        return np.ones(t.shape, dtype=bool), math.inf
    order = np.argsort(-mag, kind="stable")
    kth = mag[order[k - 1]]
    if exact_k:
        keep = np.zeros(n, dtype=bool)
        keep[order[:k]] = True
    else:
        keep = mag >= kth
    # Every kept entry must stay above every dropped one whatever the f32 rounding.
    low = np.min(mag[keep] - e[keep])
    high = np.max(mag[~keep] + e[~keep])
    margin = low - high
    assert margin > 0, f"magnitude threshold within float32 error (margin {margin:.3e})"
    return keep.reshape(t.shape), margin / kth


def combine(tensors, errors, weights, seeds, *, pruning, consensus, density, peft, frequency, lam, check=True):
    """The entry-wise combination of one module's task tensors (float64).

    Returns (combined, keeps, margins). `tensors[i]` is input i's task tensor (dense delta or
    factor), `errors[i]` its float32 error bound, `seeds[i]` its DARE seed."""
    n = len(tensors)
    pruned, perr, keeps = [], [], []
    margins = {}
    for t, e, seed in zip(tensors, errors, seeds):
        if pruning == "magnitude":
            keep, m = magnitude_keep(t, e, density, exact_k=peft)
            margins["threshold"] = min(margins.get("threshold", math.inf), m)
            pruned.append(np.where(keep, t, 0.0))
            perr.append(np.where(keep, e, 0.0))
        elif pruning == "random":
            keep = dare_keep(seed, t.shape, density)
            pruned.append(np.where(keep, t / density, 0.0))
            # + the rounding of 1/density to f32 and of the product
            perr.append(np.where(keep, (e + 2 * UNIT * np.abs(t)) / density, 0.0))
        else:
            keep = None
            pruned.append(t)
            perr.append(e)
        keeps.append(keep)
        if check and consensus and keep is not None and np.any(e[keep] > 0):
            # The sign of each kept entry decides whether it agrees: it must be exact in f32
            # (factors are exact f32 values: no error, nothing to check).
            assert np.all(np.abs(t[keep]) > e[keep]), "a kept entry's sign is within float32 error"
            ratio = np.abs(t[keep]) / e[keep]
            margins["entry_sign"] = min(margins.get("entry_sign", math.inf), float(np.min(ratio)))
    w = np.asarray(weights, dtype=np.float64)
    if not consensus:
        return sum(wi * ti for wi, ti in zip(w, pruned)), keeps, margins
    # Votes: PEFT on the unweighted pruned tensors, paper on the weighted ones.
    vw = np.ones(n) if peft else w
    voted = [vi * ti for vi, ti in zip(vw, pruned)]
    if frequency:
        votes = sum(np.sign(x) for x in voted)
    else:
        votes = sum(voted)
        # Any entry with a candidate: its elected sign must survive float32 summation.
        bound = sum(abs(vi) * ei for vi, ei in zip(vw, perr)) + 2 * (n + 2) * UNIT * sum(
            np.abs(x) for x in voted
        )
        live = sum(np.abs(x) for x in voted) > 0
        if check and np.any(live):
            ratio = np.abs(votes[live]) / np.maximum(bound[live], 1e-300)
            margins["vote"] = float(np.min(ratio))
            assert np.all(np.abs(votes[live]) > bound[live]), "an elected sign is within float32 error"
    elected = np.where(votes >= 0, 1.0, -1.0)
    agree = [np.sign(x) == elected for x in voted]
    num = sum(a * wi * ti for a, wi, ti in zip(agree, w, pruned))
    if peft:
        den = sum(a.astype(np.float64) for a in agree)
        out = num / np.maximum(den, 1.0)
    else:
        den = sum(a * abs(wi) for a, wi in zip(agree, w))
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    lam = 1.0 if lam is None else lam
    return lam * out, keeps, margins


def hand_checks() -> None:
    """algorithms.md section 1.5 worked examples, through `combine` (exact inputs, so the
    float32 margin checks are off: coordinate 2 has a vote sum of exactly 0, elected +)."""
    t1 = np.array([[1.0, -2.0, 0.5, 0.0]])
    t2 = np.array([[3.0, 1.0, -0.5, 0.0]])
    z = np.zeros_like(t1)

    def ties(weights, peft, frequency=False):
        out, _, _ = combine(
            [t1, t2], [z, z], weights, [0, 0], pruning=None, consensus=True, density=1.0,
            peft=peft, frequency=frequency, lam=None, check=False,
        )
        return out[0].tolist()

    assert ties([1, 1], False) == [2.0, -2.0, 0.5, 0.0]
    assert ties([1, 1], False, frequency=True) == [2.0, 1.0, 0.5, 0.0]
    # weight normalisation: PEFT's count mean vs the paper's |w|-weighted mean
    assert ties([0.5, 0.5], True) == [1.0, -1.0, 0.25, 0.0]
    assert ties([0.5, 0.5], False) == [2.0, -2.0, 0.5, 0.0]
    keep, _ = magnitude_keep(t1, z, 0.5, exact_k=False)
    assert keep.tolist() == [[True, True, False, False]]


# ------------------------------------------------------- file formats ---

DTYPES = {np.float32: "F32", np.float64: "F64", np.uint8: "U8", np.uint32: "U32"}


def write_safetensors(path: Path, tensors: dict, metadata: dict) -> None:
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": DTYPES[arr.dtype.type],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def read_safetensors(path: Path) -> dict:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    names = {v: k for k, v in DTYPES.items()}
    out = {}
    for name, info in header.items():
        s, e = info["data_offsets"]
        dt = np.dtype(names[info["dtype"]]).newbyteorder("<")
        out[name] = np.frombuffer(blob[8 + n + s : 8 + n + e], dtype=dt).reshape(info["shape"])
    return out


def pattern_value(pattern: dict, module: str, default):
    for key, val in pattern.items():
        if module == key or module.endswith("." + key):
            return val
    return default


def build_input(name: str, seed: int, cfg: dict, root: Path) -> Path:
    rng = np.random.default_rng(seed)
    tensors = {}
    for module in cfg["modules"]:
        d_out, d_in = SHAPES[module]
        r = pattern_value(cfg.get("rank_pattern", {}), module, cfg["r"])
        a = rng.standard_normal((r, d_in)) / math.sqrt(d_in)
        b = rng.standard_normal((d_out, r)) / math.sqrt(r)
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.astype(np.float32)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = b.astype(np.float32)
    out = root / name
    out.mkdir(parents=True)
    write_safetensors(out / "adapter_model.safetensors", tensors, {"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": BASE_MODEL_NAME,
        "r": cfg["r"],
        "lora_alpha": cfg["lora_alpha"],
        "use_rslora": cfg["use_rslora"],
        "use_dora": False,
        "fan_in_fan_out": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "inference_mode": True,
        "target_modules": sorted({m.rsplit(".", 1)[1] for m in cfg["modules"]}),
        "rank_pattern": cfg.get("rank_pattern", {}),
        "alpha_pattern": cfg.get("alpha_pattern", {}),
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def load_input(in_dir: Path) -> dict:
    """module -> (A, B, scale), float64, read back from the written files only."""
    cfg = json.loads((in_dir / "adapter_config.json").read_text())
    tensors = read_safetensors(in_dir / "adapter_model.safetensors")
    out = {}
    for key in tensors:
        if key.endswith(".lora_A.weight"):
            module = key[len(PREFIX) : -len(".lora_A.weight")]
            A = tensors[key].astype(np.float64)
            B = tensors[f"{PREFIX}{module}.lora_B.weight"].astype(np.float64)
            r = pattern_value(cfg["rank_pattern"], module, cfg["r"])
            alpha = pattern_value(cfg["alpha_pattern"], module, cfg["lora_alpha"])
            assert A.shape[0] == r == B.shape[1], (in_dir, key)
            scale = alpha / math.sqrt(r) if cfg["use_rslora"] else alpha / r
            out[module] = (A, B, scale)
    return out


def dense_with_error(A, B, s):
    """s*B@A in float64 and the bound on float32's error computing it (inner size r, then
    the scale): 2*(r+2)*u*sum_k |s*b_k*a_k|."""
    r = A.shape[0]
    return s * (B @ A), 2 * (r + 2) * UNIT * abs(s) * (np.abs(B) @ np.abs(A))


# ---------------------------------------------------------------- main ---


def main() -> None:
    out_root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DEFAULT_OUT
    chacha_self_test()
    hand_checks()
    if out_root.exists():
        shutil.rmtree(out_root)
    (out_root / "inputs").mkdir(parents=True)

    dirs = {name: build_input(name, seed, cfg, out_root / "inputs") for name, (seed, cfg) in INPUTS.items()}
    loaded = {name: load_input(d) for name, d in dirs.items()}

    cases_out = []
    derived = []
    for c in CASES:
        spec = c["spec"]
        peft = spec.get("compat") == "peft"
        method = spec["method"]
        base = method[: -len("_svd")] if method.endswith("_svd") else method
        pruning = {"ties": "magnitude", "magnitude_prune": "magnitude"}.get(base, "random")
        consensus = base in ("ties", "dare_ties")
        frequency = spec.get("majority_sign") == "frequency"
        factor_route = peft and not method.endswith("_svd")
        names = c["inputs"]
        weights = spec.get("weights") or [1.0] * len(names)
        seed = spec.get("seed", 0)
        density = spec["density"]
        tensors_out, modules_out, margins_all = {}, {}, {}

        def run_combine(path, tag, present, mats, errs, ws):
            seeds = [derive_seed(seed, path, i, tag) for i in present]
            if pruning == "random":
                for i, s in zip(present, seeds):
                    derived.append({"seed": seed, "module": path, "input": i, "tag": tag, "value": s})
            out, keeps, margins = combine(
                mats, errs, ws, seeds, pruning=pruning, consensus=consensus, density=density,
                peft=peft, frequency=frequency, lam=spec.get("lambda"),
            )
            for i, keep in zip(present, keeps):
                tensors_out[f"{path}.keep.{tag}.{i}"] = keep.astype(np.uint8)
            for k, v in margins.items():
                margins_all[f"{k}"] = min(margins_all.get(k, math.inf), v)
            return out

        paths = sorted({p for n in names for p in loaded[n]})
        for path in paths:
            present = [i for i, n in enumerate(names) if path in loaded[n]]
            factors = [loaded[names[i]][path] for i in present]
            if factor_route:
                ranks = {A.shape[0] for A, _, _ in factors}
                assert len(ranks) == 1, (c["case"], path, ranks)
                cw = [weights[i] * s for i, (_, _, s) in zip(present, factors)]
                g = [math.sqrt(abs(x)) for x in cw]
                wa = [(-gi if x < 0 else gi) for x, gi in zip(cw, g)]
                zeros = lambda m: np.zeros_like(m)  # noqa: E731  factors are exact in f32
                A_new = run_combine(path, "A", present, [A for A, _, _ in factors],
                                    [zeros(A) for A, _, _ in factors], wa)
                B_new = run_combine(path, "B", present, [B for _, B, _ in factors],
                                    [zeros(B) for _, B, _ in factors], g)
                delta = B_new @ A_new
            else:
                dense = [dense_with_error(A, B, s) for A, B, s in factors]
                delta = run_combine(path, "delta", present, [d for d, _ in dense],
                                    [e for _, e in dense], [weights[i] for i in present])
            tensors_out[f"{path}.delta"] = delta.astype(np.float64)
            nonzero = np.abs(delta[delta != 0])
            modules_out[path] = {
                "present": present,
                "shape": list(delta.shape),
                "frobenius": float(np.linalg.norm(delta)),
                "smallest_nonzero_abs": float(nonzero.min()) if nonzero.size else 0.0,
                "nonzero": int(nonzero.size),
            }
        rel = f"{c['case']}.safetensors"
        write_safetensors(out_root / rel, tensors_out, {"generator": "scripts/make_merge_reference_fixtures.py"})
        cases_out.append(
            {
                "case": c["case"],
                "file": rel,
                "inputs": names,
                "spec": spec,
                "route": c["route"],
                "modules": modules_out,
                "margins": {k: float(f"{v:.4g}") for k, v in sorted(margins_all.items())},
            }
        )
        print(f"[{c['case']}] {len(paths)} modules; margins {cases_out[-1]['margins']}")

    stream_seeds = STREAM_SEEDS + [derive_seed(20240917, Q, 0, "delta")]
    stream = {f"words.{s}": chacha8_stream(s, STREAM_WORDS) for s in stream_seeds}
    write_safetensors(out_root / "chacha8_stream.safetensors", stream, {"generator": "scripts/make_merge_reference_fixtures.py"})

    doc = {
        "generator": "scripts/make_merge_reference_fixtures.py",
        "numpy": np.__version__,
        "base_model_name_or_path": BASE_MODEL_NAME,
        "tensor_naming": {
            "<module>.delta": "F64 [d_out, d_in]: expected merged delta at scale 1 (float64)",
            "<module>.keep.<tag>.<input index>": "U8: 1 where the pruning keeps the entry of that input's tensor (tag delta = s*B*A, A or B = the factor)",
        },
        "inputs": {
            name: {
                "dir": f"inputs/{name}",
                "seed": seed,
                "r": cfg["r"],
                "lora_alpha": cfg["lora_alpha"],
                "use_rslora": cfg["use_rslora"],
                "rank_pattern": cfg.get("rank_pattern", {}),
                "alpha_pattern": cfg.get("alpha_pattern", {}),
                "modules": {
                    p: {"shape": list(SHAPES[p]), "rank": int(loaded[name][p][0].shape[0]), "scale": loaded[name][p][2]}
                    for p in cfg["modules"]
                },
            }
            for name, (seed, cfg) in INPUTS.items()
        },
        "cases": cases_out,
        "chacha8": {
            "file": "chacha8_stream.safetensors",
            "words": STREAM_WORDS,
            "seeds": [str(s) for s in stream_seeds],
            "key_words": {str(s): pcg32_key(s) for s in stream_seeds},
        },
        "derived_seeds": derived,
    }
    (out_root / "cases.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in out_root.rglob("*") if p.is_file())
    print(f"wrote {out_root} ({total} bytes)")
    assert total < 1_000_000, total


if __name__ == "__main__":
    main()
