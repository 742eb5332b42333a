//! `quiver compress`: individual truncation, joint shared-basis collections, and extraction.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use quiver_merge::compress::joint::JointParams;
use quiver_merge::compress::{COMPRESS_REPORT_NAME, compress_individual, compress_joint, extract};
use quiver_merge::linalg::Cut;
use quiver_merge::{LoraAdapter, MergeError};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    Individual,
    Joint,
}

#[derive(Args, Debug)]
pub struct CompressArgs {
    /// `individual` (one adapter to a lower rank) or `joint` (shared bases for a collection).
    #[arg(long, value_enum, required_unless_present = "extract")]
    pub mode: Option<Mode>,
    /// individual: output rank; joint: shared rank c.
    #[arg(long)]
    pub rank: Option<usize>,
    /// individual: keep the smallest rank holding this fraction of each module's energy.
    #[arg(long)]
    pub energy: Option<f64>,
    /// joint: diagonal per-member cores (c numbers instead of c²).
    #[arg(long)]
    pub diag: bool,
    /// joint: number of clusters, each with its own bases.
    #[arg(long, default_value_t = 1)]
    pub clusters: usize,
    /// joint: alternating iterations at most.
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write member MEMBER (its directory name or index) of --from back as a PEFT adapter.
    #[arg(long, requires = "from", conflicts_with = "mode")]
    pub extract: Option<String>,
    /// The collection directory to extract from.
    #[arg(long)]
    pub from: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// Adapter directories.
    pub inputs: Vec<PathBuf>,
}

pub fn run(args: CompressArgs) -> Result<(), Box<dyn std::error::Error>> {
    let bad = |m: &str| MergeError::InvalidParam(m.to_string());
    if let (Some(member), Some(from)) = (&args.extract, &args.from) {
        extract(from, member, &args.out)?;
        eprintln!("extracted {member} from {}", from.display());
        println!("{}", args.out.display());
        return Ok(());
    }
    let open = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| LoraAdapter::open(p))
            .collect::<Result<Vec<_>, _>>()
    };
    let report = match args.mode {
        Some(Mode::Individual) => {
            let cut = match (args.rank, args.energy) {
                (Some(k), None) if k >= 1 => Cut::Rank(k),
                (None, Some(e)) if e > 0.0 && e <= 1.0 => Cut::Energy(e),
                _ => return Err(bad("individual compression needs exactly one of --rank K (≥ 1) or --energy E in (0, 1]").into()),
            };
            if args.inputs.len() != 1 {
                return Err(bad("individual compression takes exactly one input directory").into());
            }
            compress_individual(&open(&args.inputs)?[0], cut, &args.out)?
        }
        Some(Mode::Joint) => {
            let rank = args
                .rank
                .filter(|k| *k >= 1)
                .ok_or_else(|| bad("joint compression needs --rank C (≥ 1)"))?;
            if args.energy.is_some() {
                return Err(bad("--energy applies to individual compression").into());
            }
            if args.inputs.is_empty() {
                return Err(bad("give the adapter directories to compress").into());
            }
            if args.clusters == 0 {
                return Err(bad("--clusters must be at least 1").into());
            }
            let params = JointParams {
                rank,
                diag: args.diag,
                clusters: args.clusters,
                iters: args.iters,
                seed: args.seed,
            };
            compress_joint(&open(&args.inputs)?, params, &args.out)?
        }
        None => {
            return Err(bad("give --mode individual|joint, or --extract MEMBER --from DIR").into());
        }
    };
    eprintln!(
        "compressed: {} → {} bytes of factors, relative error {:.3e}, {:.2} s; report in {}",
        report["bytes_before"],
        report["bytes_after"],
        report["relative_error"].as_f64().unwrap_or(f64::NAN),
        report["seconds"].as_f64().unwrap_or(f64::NAN),
        args.out.join(COMPRESS_REPORT_NAME).display()
    );
    println!("{}", args.out.display());
    Ok(())
}
