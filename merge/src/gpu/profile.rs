//! Optional timing of the GPU passes (`QUIVER_GPU_PROFILE=1`): CUDA events around each pass of
//! the dense family, summed per pass with the bytes it moves, and the device's copy bandwidth
//! measured in the same process, so a run reports its kernels beside the memory floor. Off by
//! default: reading an event waits for the stream, which stops host and device overlapping.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::{CudaEvent, sys::CUevent_flags};

use super::{Gpu, gpu_err};
use crate::error::MergeError;

/// Seconds and bytes per pass name.
static TOTALS: Mutex<BTreeMap<&'static str, (f64, f64)>> = Mutex::new(BTreeMap::new());

pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("QUIVER_GPU_PROFILE").is_ok_and(|v| v == "1"))
}

/// A started pass (nothing when profiling is off).
pub struct Pass(Option<(CudaEvent, &'static str, f64)>);

impl Gpu {
    /// Starts timing pass `name`, which moves `bytes` to or from device memory.
    pub(crate) fn pass(&self, name: &'static str, bytes: f64) -> Result<Pass, MergeError> {
        if !enabled() {
            return Ok(Pass(None));
        }
        let e = self
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(gpu_err("profile event"))?;
        Ok(Pass(Some((e, name, bytes))))
    }

    /// Ends a pass started by [`Gpu::pass`].
    pub(crate) fn end(&self, pass: Pass) -> Result<(), MergeError> {
        let Some((start, name, bytes)) = pass.0 else {
            return Ok(());
        };
        let end = self
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(gpu_err("profile event"))?;
        let ms = start.elapsed_ms(&end).map_err(gpu_err("profile event"))?;
        let mut t = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
        let e = t.entry(name).or_default();
        e.0 += f64::from(ms) / 1000.0;
        e.1 += bytes;
        Ok(())
    }

    /// Device-to-device copy bandwidth (bytes read + written per second) over a 1 GiB buffer.
    pub fn copy_bandwidth(&self) -> Result<f64, MergeError> {
        let len = 1usize << 28;
        let src = self.zeros::<f32>(len)?;
        let mut dst = self.zeros::<f32>(len)?;
        let copy = |dst: &mut cudarc::driver::CudaSlice<f32>| {
            self.stream
                .memcpy_dtod(&src, dst)
                .map_err(gpu_err("bandwidth copy"))
        };
        copy(&mut dst)?;
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(flags).map_err(gpu_err("event"))?;
        let reps = 10;
        for _ in 0..reps {
            copy(&mut dst)?;
        }
        let end = self.stream.record_event(flags).map_err(gpu_err("event"))?;
        let s = f64::from(start.elapsed_ms(&end).map_err(gpu_err("event"))?) / 1000.0;
        Ok((2 * 4 * len * reps) as f64 / s)
    }
}

/// The profile so far, one line per pass with its memory floor at `bandwidth` (None when off).
pub fn summary(gpu: &Gpu) -> Result<Option<String>, MergeError> {
    if !enabled() {
        return Ok(None);
    }
    let bw = gpu.copy_bandwidth()?;
    let t = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = format!(
        "GPU profile on {} (device copy bandwidth {:.0} GB/s):\n",
        gpu.name,
        bw / 1e9
    );
    for (name, (s, bytes)) in t.iter() {
        out.push_str(&format!(
            "  {name:<12} {:>9.1} ms  {:>8.1} GB moved  {:>6.0} GB/s  floor {:>8.1} ms ({:.2}x)\n",
            s * 1e3,
            bytes / 1e9,
            bytes / s.max(1e-12) / 1e9,
            bytes / bw * 1e3,
            s / (bytes / bw).max(1e-12)
        ));
    }
    Ok(Some(out))
}
