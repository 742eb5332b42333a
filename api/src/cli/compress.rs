//! `quiver compress`: flags → [`CompressSpec`] (the payload compression jobs carry too), then the
//! engine on local directories.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use quiver_merge::compress::COMPRESS_REPORT_NAME;
use quiver_merge::compress::spec::DEFAULT_JOINT_ITERS;
use quiver_merge::{CompressSpec, Control, MergeError};

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
    #[arg(long, default_value_t = DEFAULT_JOINT_ITERS)]
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

impl CompressArgs {
    /// The spec and its input directories.
    pub fn spec(&self) -> Result<(CompressSpec, Vec<PathBuf>), MergeError> {
        let bad = |m: &str| MergeError::InvalidParam(m.to_string());
        if let (Some(member), Some(from)) = (&self.extract, &self.from) {
            return Ok((
                CompressSpec::Extract {
                    member: member.clone(),
                },
                vec![from.clone()],
            ));
        }
        let spec = match self.mode {
            Some(Mode::Individual) => CompressSpec::Individual {
                rank: self.rank,
                energy: self.energy,
            },
            Some(Mode::Joint) => {
                if self.energy.is_some() {
                    return Err(bad("--energy applies to individual compression"));
                }
                CompressSpec::Joint {
                    rank: self.rank.unwrap_or(0),
                    diag: self.diag,
                    clusters: self.clusters,
                    iters: self.iters,
                    seed: self.seed,
                }
            }
            None => {
                return Err(bad(
                    "give --mode individual|joint, or --extract MEMBER --from DIR",
                ));
            }
        };
        spec.validate(self.inputs.len())?;
        Ok((spec, self.inputs.clone()))
    }
}

pub fn run(args: CompressArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (spec, inputs) = args.spec()?;
    let report = spec.run(&inputs, &args.out, &Control::none())?;
    match report {
        None => eprintln!("extracted a member of {}", inputs[0].display()),
        Some(report) => eprintln!(
            "compressed: {} → {} bytes of factors, relative error {:.3e}, {:.2} s; report in {}",
            report["bytes_before"],
            report["bytes_after"],
            report["relative_error"].as_f64().unwrap_or(f64::NAN),
            report["seconds"].as_f64().unwrap_or(f64::NAN),
            args.out.join(COMPRESS_REPORT_NAME).display()
        ),
    }
    println!("{}", args.out.display());
    Ok(())
}
