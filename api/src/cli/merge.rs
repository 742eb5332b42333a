//! `quiver merge`: flags → [`MergeSpec`], progress on a terminal, the engine, the writer.

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::device::DeviceKind;
use candle_core::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use quiver_merge::spec::{DEFAULT_LEGO_ITERS, parse_choice};
use quiver_merge::{
    Compat, LoraAdapter, MajoritySign, MergeError, MergeSpec, Method, OutDtype, SvdMode, TrimScope,
};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// cat, linear (task_arithmetic), svd, ties, dare_linear, dare_ties, magnitude_prune, lora_lego, ziplora; with
    /// --compat peft also ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd.
    #[arg(long)]
    pub method: String,
    /// One weight per input, comma-separated (default 1 each); may be negative.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub weights: Option<Vec<f64>>,
    /// Fraction of entries kept by ties (default 0.2), dare_* and magnitude_prune, in (0, 1].
    #[arg(long)]
    pub density: Option<f64>,
    /// Output rank of truncating methods (default: the largest input rank).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Seed of DARE masks and randomized SVD sketches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Final scale of ties and dare_ties.
    #[arg(long)]
    pub lambda: Option<f64>,
    /// ties / dare_ties sign election: `total` or `frequency`.
    #[arg(long, default_value = "total", value_parser = parse_choice::<MajoritySign>)]
    pub majority_sign: MajoritySign,
    /// Trimming threshold per `module` or over the whole model (`global`).
    #[arg(long, default_value = "module", value_parser = parse_choice::<TrimScope>)]
    pub trim_scope: TrimScope,
    /// Truncation SVD: `auto`, `exact` or `randomized`.
    #[arg(long, default_value = "auto", value_parser = parse_choice::<SvdMode>)]
    pub svd: SvdMode,
    /// `peft` reproduces PEFT add_weighted_adapter's arithmetic (for parity checks); default `paper`.
    #[arg(long, default_value = "paper", value_parser = parse_choice::<Compat>)]
    pub compat: Compat,
    /// Where the merge runs: `cpu`, or `cuda` (a build with the `cuda` feature and an NVIDIA GPU).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// lora_lego: number of clusters = output rank (default: the largest input rank).
    #[arg(long)]
    pub k: Option<usize>,
    /// lora_lego: k-means iterations at most.
    #[arg(long, default_value_t = DEFAULT_LEGO_ITERS)]
    pub iters: usize,
    /// lora_lego: keep raw centroids (no norm restoration).
    #[arg(long)]
    pub no_param_reweight: bool,
    /// lora_lego: do not scale the output by √(r/k).
    #[arg(long)]
    pub no_output_reweight: bool,
    /// ziplora: weight of the column-overlap penalty (default 0.01).
    #[arg(long)]
    pub lambda_sim: Option<f64>,
    /// ziplora: Adam steps (default 200).
    #[arg(long)]
    pub steps: Option<usize>,
    /// ziplora: Adam learning rate (default 0.01).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Output dtype `f32`, `f16` or `bf16` (default: the first input's).
    #[arg(long, value_parser = parse_choice::<OutDtype>)]
    pub dtype: Option<OutDtype>,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    /// PEFT adapter directories.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

impl MergeArgs {
    pub fn spec(&self) -> Result<MergeSpec, MergeError> {
        let mut spec = MergeSpec::new(Method::parse(&self.method, self.compat)?);
        spec.compat = self.compat;
        spec.weights = self.weights.clone();
        spec.density = self.density;
        spec.rank = self.rank;
        spec.seed = self.seed;
        spec.lambda = self.lambda;
        spec.majority_sign = self.majority_sign;
        spec.trim_scope = self.trim_scope;
        spec.svd = self.svd;
        spec.k = self.k;
        spec.iters = self.iters;
        spec.param_reweight = !self.no_param_reweight;
        spec.output_reweight = !self.no_output_reweight;
        spec.lambda_sim = self.lambda_sim;
        spec.steps = self.steps;
        spec.lr = self.lr;
        spec.dtype = self.dtype;
        spec.validate(self.inputs.len())?;
        Ok(spec)
    }
}

pub fn device(kind: DeviceKind) -> Result<Device, MergeError> {
    kind.open().map_err(MergeError::InvalidParam)
}

pub fn run(args: MergeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let spec = args.spec()?;
    let device = device(args.device)?;
    let inputs = LoraAdapter::open_all(&args.inputs)?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} modules ({elapsed}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(format!("merging ({})", spec.method.name()));
        Some(bar)
    } else {
        None
    };
    let progress = |done: usize, total: usize| match &bar {
        Some(b) => {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
        None if done == total || done.is_multiple_of(32) => tracing::info!(done, total, "merging"),
        None => {}
    };
    // Finished modules wait on disk beside the output, not in memory, until it is written.
    let merged = quiver_merge::merge_parked(
        &inputs,
        &spec,
        &device,
        &quiver_merge::Control::progress(&progress),
        &quiver_merge::engine::parking_dir(&args.out)?,
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    quiver_merge::write_adapter(&args.out, &inputs, &spec, &merged)?;
    let worst = merged
        .reports
        .iter()
        .map(|r| r.relative_error)
        .fold(0.0f64, f64::max);
    // The GPU's pass times, when `QUIVER_GPU_PROFILE=1` (none on the CPU or without `cuda`).
    if let Some(gpu) = quiver_merge::gpu::Gpu::of(&device)?
        && let Some(profile) = quiver_merge::gpu::profile::summary(&gpu)?
    {
        eprint!("{profile}");
    }
    eprintln!(
        "merged {} module(s) on {} in {:.2} s; largest relative truncation error {:.3e}; report in {}",
        merged.modules.len(),
        merged.device,
        merged.seconds,
        worst,
        args.out.join(quiver_merge::write::REPORT_NAME).display()
    );
    println!("{}", args.out.display());
    Ok(())
}
