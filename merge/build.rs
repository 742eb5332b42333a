//! With the `cuda` feature, compiles `src/gpu/kernels.cu` to PTX for the target GPU with the nvcc
//! of the CUDA toolchain (`scripts/build-cuda.sh` sets it up); without it, does nothing.
//!
//! The compiler is `$QUIVER_NVCC`, else `$NVCC`, else `nvcc` on the PATH. `QUIVER_NVCC` names an
//! nvcc for these kernels only: `scripts/check-cuda.sh` type-checks the `cuda` build with a
//! stand-in `$NVCC` that compiles nothing (candle's kernels take ~20 min of nvcc) and still
//! compiles these with the real one.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=src/gpu/kernels.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=QUIVER_NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("QUIVER_NVCC")
        .or_else(|_| std::env::var("NVCC"))
        .unwrap_or_else(|_| "nvcc".into());
    // --fmad=false: no contraction of a*b+c into FMA, so the kernels round like the CPU code.
    let status = Command::new(&nvcc)
        .args(["-ptx", "-O3", "--fmad=false", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("src/gpu/kernels.cu")
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("could not run {nvcc} ({e}): build with scripts/build-cuda.sh"));
    assert!(status.success(), "nvcc failed on src/gpu/kernels.cu");
}
