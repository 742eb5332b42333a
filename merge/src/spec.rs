//! What to merge and how: methods, parameters and their validation.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::MergeError;

/// Merge methods. Default semantics are the papers'; [`Compat::Peft`] switches to PEFT's
/// `add_weighted_adapter` arithmetic (see docs/merging.md for every difference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Exact concatenation of the factors, rank Σr.
    Cat,
    /// Exact Σ wᵢΔWᵢ (alias `task_arithmetic`), optionally truncated through the factored route.
    Linear,
    /// `linear` truncated to a rank (PEFT's name).
    Svd,
    Ties,
    DareLinear,
    DareTies,
    MagnitudePrune,
    /// LoRA-LEGO: k-means over the pooled rank units (see `lego`).
    LoraLego,
    /// ZipLoRA: learned column-wise mergers, data-free loss (see `ziplora`).
    ZipLora,
    // PEFT-only names (valid with `--compat peft`): the dense variants of the family above.
    TiesSvd,
    DareLinearSvd,
    DareTiesSvd,
    MagnitudePruneSvd,
}

impl Method {
    pub fn parse(name: &str, compat: Compat) -> Result<Self, MergeError> {
        let m = match name {
            "cat" => Method::Cat,
            "linear" => Method::Linear,
            "task_arithmetic" if compat == Compat::Paper => Method::Linear,
            "svd" => Method::Svd,
            "ties" => Method::Ties,
            "dare_linear" => Method::DareLinear,
            "dare_ties" => Method::DareTies,
            "magnitude_prune" => Method::MagnitudePrune,
            "lora_lego" if compat == Compat::Paper => Method::LoraLego,
            "ziplora" if compat == Compat::Paper => Method::ZipLora,
            "ties_svd" if compat == Compat::Peft => Method::TiesSvd,
            "dare_linear_svd" if compat == Compat::Peft => Method::DareLinearSvd,
            "dare_ties_svd" if compat == Compat::Peft => Method::DareTiesSvd,
            "magnitude_prune_svd" if compat == Compat::Peft => Method::MagnitudePruneSvd,
            other => {
                let names = match compat {
                    Compat::Paper => {
                        "cat, linear, task_arithmetic, svd, ties, dare_linear, dare_ties, magnitude_prune"
                    }
                    Compat::Peft => {
                        "linear, cat, svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd, \
                         magnitude_prune, magnitude_prune_svd"
                    }
                };
                return Err(MergeError::InvalidParam(format!(
                    "unknown method {other:?}; choose one of {names}"
                )));
            }
        };
        Ok(m)
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Cat => "cat",
            Method::Linear => "linear",
            Method::Svd => "svd",
            Method::Ties => "ties",
            Method::DareLinear => "dare_linear",
            Method::DareTies => "dare_ties",
            Method::MagnitudePrune => "magnitude_prune",
            Method::LoraLego => "lora_lego",
            Method::ZipLora => "ziplora",
            Method::TiesSvd => "ties_svd",
            Method::DareLinearSvd => "dare_linear_svd",
            Method::DareTiesSvd => "dare_ties_svd",
            Method::MagnitudePruneSvd => "magnitude_prune_svd",
        }
    }

    /// How the entries are sparsified before combining.
    pub fn pruning(self) -> Pruning {
        match self {
            Method::Ties | Method::TiesSvd | Method::MagnitudePrune | Method::MagnitudePruneSvd => {
                Pruning::Magnitude
            }
            Method::DareLinear | Method::DareTies | Method::DareLinearSvd | Method::DareTiesSvd => {
                Pruning::Random
            }
            Method::Cat | Method::Linear | Method::Svd | Method::LoraLego | Method::ZipLora => {
                Pruning::None
            }
        }
    }

    /// Whether signs are elected and agreeing entries averaged (TIES consensus).
    pub fn consensus(self) -> bool {
        matches!(
            self,
            Method::Ties | Method::TiesSvd | Method::DareTies | Method::DareTiesSvd
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pruning {
    None,
    Magnitude,
    Random,
}

/// Whose arithmetic to follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Compat {
    /// The papers' definitions on dense ΔW (exact where exactness is possible).
    #[default]
    Paper,
    /// PEFT `add_weighted_adapter`: factor averaging, unweighted sign election, count mean,
    /// per-tensor exact-k trimming.
    Peft,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MajoritySign {
    /// Sign of the (weighted) sum of the trimmed values.
    #[default]
    Total,
    /// Sign of the count of positive minus negative entries.
    Frequency,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TrimScope {
    /// One magnitude threshold per adapter and module (what PEFT and mergekit do).
    #[default]
    Module,
    /// One threshold per adapter over the whole model (what the TIES paper does).
    Global,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SvdMode {
    /// Exact SVD for small matrices, randomized for large dense ones.
    #[default]
    Auto,
    Exact,
    Randomized,
}

/// Output dtype of the written factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum OutDtype {
    F32,
    F16,
    Bf16,
}

// Limits on every request parameter that scales work or memory, or that can carry a result out
// of f32's range. Generous for real use (the defaults are far below them), finite so one request
// cannot run forever or publish inf/NaN. docs/merging.md and the API's schema state them.

/// Most inputs of one merge or compression (the service's jobs allow fewer, see its API docs).
pub const MAX_INPUTS: usize = 1024;
/// Largest |weight| and |lambda| (TIES scale): beyond it Σ wᵢΔWᵢ leaves f32's useful range.
pub const MAX_WEIGHT: f64 = 1e6;
/// Largest output rank (`rank`, LoRA-LEGO's `k`, compression's `rank`).
pub const MAX_RANK: usize = 65_536;
/// Most LoRA-LEGO Lloyd iterations (`iters`; default 20).
pub const MAX_LEGO_ITERS: usize = 10_000;
/// Most ZipLoRA Adam steps (`steps`; default 200).
pub const MAX_ZIP_STEPS: usize = 100_000;
/// Largest ZipLoRA learning rate (`lr`; default 0.01; mergers start at 1).
pub const MAX_LR: f64 = 10.0;
/// Largest ZipLoRA overlap penalty weight (`lambda_sim`; default 0.01).
pub const MAX_LAMBDA_SIM: f64 = 1e6;
/// `svd: exact` on a dense result is refused where the smaller side of a module exceeds this (a
/// dense f64 SVD's time and memory grow with its square); `auto` and `randomized` have no limit.
pub const MAX_EXACT_SVD_SIDE: usize = 8192;

/// `Err(InvalidParam)` naming `field` when `value` exceeds `max`.
pub(crate) fn at_most<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    max: T,
) -> Result<(), MergeError> {
    if value > max {
        Err(MergeError::InvalidParam(format!(
            "`{field}` must be at most {max}, got {value}"
        )))
    } else {
        Ok(())
    }
}

/// A complete merge request. Read from JSON (the service's job payload) with
/// [`MergeSpec::from_json`]: every field but `method` has a default and unknown fields are refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "SpecFields")]
pub struct MergeSpec {
    pub method: Method,
    pub compat: Compat,
    /// One per input; `None` means 1 for every input.
    pub weights: Option<Vec<f64>>,
    /// Fraction of entries kept, in (0, 1].
    pub density: Option<f64>,
    /// Output rank for truncating methods.
    pub rank: Option<usize>,
    pub seed: u64,
    /// Final scale of TIES and DARE-TIES (paper semantics).
    pub lambda: Option<f64>,
    pub majority_sign: MajoritySign,
    pub trim_scope: TrimScope,
    pub svd: SvdMode,
    /// Output dtype; `None` keeps the first input's.
    pub dtype: Option<OutDtype>,
    /// LoRA-LEGO: clusters (default: the largest input rank on the module).
    pub k: Option<usize>,
    /// LoRA-LEGO: Lloyd iterations at most.
    pub iters: usize,
    /// LoRA-LEGO: rescale each centroid to its members' mean norm.
    pub param_reweight: bool,
    /// LoRA-LEGO: scale the output by √(r/k).
    pub output_reweight: bool,
    /// ZipLoRA: weight of the column-overlap penalty (default 0.01).
    pub lambda_sim: Option<f64>,
    /// ZipLoRA: Adam steps (default 200).
    pub steps: Option<usize>,
    /// ZipLoRA: Adam learning rate (default 0.01).
    pub lr: Option<f64>,
}

impl MergeSpec {
    /// A spec with defaults for everything but the method.
    pub fn new(method: Method) -> Self {
        Self {
            method,
            compat: Compat::Paper,
            weights: None,
            density: None,
            rank: None,
            seed: 0,
            lambda: None,
            majority_sign: MajoritySign::Total,
            trim_scope: TrimScope::Module,
            svd: SvdMode::Auto,
            dtype: None,
            k: None,
            iters: 20,
            param_reweight: true,
            output_reweight: true,
            lambda_sim: None,
            steps: None,
            lr: None,
        }
    }

    /// The weight of input `i`.
    pub fn weight(&self, i: usize) -> f64 {
        self.weights.as_ref().map_or(1.0, |w| w[i])
    }

    /// The density actually used: TIES defaults to the paper's 0.2, other pruning methods need it.
    pub fn effective_density(&self) -> f64 {
        self.density.unwrap_or(0.2)
    }

    /// Checks the parameters against the method and the number of inputs.
    pub fn validate(&self, n_inputs: usize) -> Result<(), MergeError> {
        let bad = |m: String| Err(MergeError::InvalidParam(m));
        let method = self.method.name();
        if n_inputs == 0 {
            return bad("give at least one input adapter".into());
        }
        if n_inputs > MAX_INPUTS {
            return bad(format!(
                "at most {MAX_INPUTS} inputs per merge, got {n_inputs}"
            ));
        }
        if let Some(w) = &self.weights {
            if w.len() != n_inputs {
                return bad(format!(
                    "{} weights for {n_inputs} inputs; give one weight per input",
                    w.len()
                ));
            }
            if let Some((i, x)) = w
                .iter()
                .enumerate()
                .find(|(_, x)| !(x.is_finite() && x.abs() <= MAX_WEIGHT))
            {
                return bad(format!(
                    "`weights[{i}]` is {x}; weights must be finite numbers with |w| ≤ {MAX_WEIGHT:e}"
                ));
            }
        }
        // Bounds on what scales work or memory (named in docs/merging.md "Limits").
        if let Some(k) = self.rank {
            at_most("rank", k, MAX_RANK)?;
        }
        if let Some(k) = self.k {
            at_most("k", k, MAX_RANK)?;
        }
        at_most("iters", self.iters, MAX_LEGO_ITERS)?;
        if let Some(s) = self.steps {
            at_most("steps", s, MAX_ZIP_STEPS)?;
        }
        match (self.method.pruning(), self.density) {
            (Pruning::None, Some(_)) => {
                return bad(format!("`density` does not apply to {method}"));
            }
            (Pruning::Random | Pruning::Magnitude, None)
                if self.compat == Compat::Peft || !matches!(self.method, Method::Ties) =>
            {
                return bad(format!(
                    "{method} needs `density` (the fraction of entries kept, in (0, 1])"
                ));
            }
            (_, Some(d)) if !(d > 0.0 && d <= 1.0) => {
                return bad(format!("`density` must be in (0, 1], got {d}"));
            }
            _ => {}
        }
        if self.rank == Some(0) {
            return bad("rank must be at least 1".into());
        }
        if self.method == Method::Cat && self.rank.is_some() {
            return bad(
                "cat is exact and keeps rank Σr; use linear with `rank`, or svd, to truncate"
                    .into(),
            );
        }
        if self.lambda.is_some() && !(self.method.consensus() && self.compat == Compat::Paper) {
            return bad("`lambda` applies to ties and dare_ties (paper semantics); fold it into the weights otherwise".into());
        }
        if let Some(l) = self.lambda
            && !(l.is_finite() && l.abs() <= MAX_WEIGHT)
        {
            return bad(format!(
                "`lambda` must be a finite number with |λ| ≤ {MAX_WEIGHT:e}, got {l}"
            ));
        }
        if self.majority_sign != MajoritySign::Total && !self.method.consensus() {
            return bad(format!(
                "`majority_sign` applies to ties and dare_ties, not {method}"
            ));
        }
        let lego = self.method == Method::LoraLego;
        if !lego && (self.k.is_some() || !self.param_reweight || !self.output_reweight) {
            return bad("`k`, `param_reweight` and `output_reweight` apply to lora_lego".into());
        }
        if lego && self.k == Some(0) {
            return bad("k must be at least 1".into());
        }
        if lego && self.rank.is_some() {
            return bad("lora_lego sets its rank with `k`".into());
        }
        let zip = self.method == Method::ZipLora;
        if !zip && (self.lambda_sim.is_some() || self.steps.is_some() || self.lr.is_some()) {
            return bad("`lambda_sim`, `steps` and `lr` apply to ziplora".into());
        }
        if zip && n_inputs < 2 {
            return bad("ziplora merges two or more adapters".into());
        }
        if self.steps == Some(0) {
            return bad("steps must be at least 1".into());
        }
        if let Some(l) = self.lambda_sim
            && !(l.is_finite() && (0.0..=MAX_LAMBDA_SIM).contains(&l))
        {
            return bad(format!(
                "`lambda_sim` must be a finite number in [0, {MAX_LAMBDA_SIM:e}], got {l}"
            ));
        }
        if let Some(lr) = self.lr
            && !(lr.is_finite() && lr > 0.0 && lr <= MAX_LR)
        {
            return bad(format!(
                "`lr` must be a finite number in (0, {MAX_LR}], got {lr}"
            ));
        }
        if self.trim_scope == TrimScope::Global
            && !(self.compat == Compat::Paper
                && matches!(self.method, Method::Ties | Method::MagnitudePrune))
        {
            return bad(
                "`trim_scope: global` applies to ties and magnitude_prune (paper semantics)".into(),
            );
        }
        Ok(())
    }
}

/// The JSON form of a [`MergeSpec`]: what a job or a client sends.
// With the `openapi` feature, also the API's schema of a merge's parameters: the limits there are
// the consts above as literals (the service's tests compare).
#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
struct SpecFields {
    /// cat, linear (task_arithmetic), svd, ties, dare_linear, dare_ties, magnitude_prune,
    /// lora_lego, ziplora; with `compat: peft` also ties_svd, dare_linear_svd, dare_ties_svd,
    /// magnitude_prune_svd.
    method: String,
    /// `paper` (default) or `peft` (PEFT add_weighted_adapter's arithmetic).
    #[serde(default)]
    compat: Compat,
    /// One per input (default 1 each). Finite, |w| ≤ 1e6.
    #[serde(default)]
    weights: Option<Vec<f64>>,
    /// Fraction of entries kept (ties default 0.2; dare_* and magnitude_prune need it), in (0, 1].
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0, maximum = 1))]
    density: Option<f64>,
    /// Output rank of truncating methods (default: the largest input rank); at most 65536.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65536))]
    rank: Option<usize>,
    /// Seed of DARE masks, randomized SVD sketches, LEGO and ZipLoRA (default 0).
    #[serde(default)]
    seed: u64,
    /// Final scale of ties and dare_ties; finite, |λ| ≤ 1e6.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = -1000000, maximum = 1000000))]
    lambda: Option<f64>,
    /// `total` (default) or `frequency`.
    #[serde(default)]
    majority_sign: MajoritySign,
    /// `module` (default) or `global`.
    #[serde(default)]
    trim_scope: TrimScope,
    /// `auto` (default), `exact` or `randomized`.
    #[serde(default)]
    svd: SvdMode,
    /// `f32`, `f16` or `bf16` (default: the first input's).
    #[serde(default)]
    dtype: Option<OutDtype>,
    /// lora_lego: clusters (= output rank); at most 65536.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65536))]
    k: Option<usize>,
    /// lora_lego: k-means iterations at most (default 20; at most 10000).
    #[serde(default = "default_iters")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 10000))]
    iters: usize,
    /// lora_lego: rescale centroids to their members' norm (default true).
    #[serde(default = "yes")]
    param_reweight: bool,
    /// lora_lego: scale the output by √(r/k) (default true).
    #[serde(default = "yes")]
    output_reweight: bool,
    /// ziplora: weight of the column-overlap penalty (default 0.01), in [0, 1e6].
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000000))]
    lambda_sim: Option<f64>,
    /// ziplora: Adam steps (default 200; at most 100000).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    steps: Option<usize>,
    /// ziplora: Adam learning rate (default 0.01), in (0, 10].
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0, maximum = 10))]
    lr: Option<f64>,
}

/// A merge's parameters in the API's schema: their JSON form's.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for MergeSpec {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <SpecFields as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for MergeSpec {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <SpecFields as utoipa::ToSchema>::schemas(schemas);
    }
}

/// LoRA-LEGO's default iteration cap (also the CLI's `--iters` default).
pub const DEFAULT_LEGO_ITERS: usize = 20;

fn default_iters() -> usize {
    DEFAULT_LEGO_ITERS
}

fn yes() -> bool {
    true
}

impl TryFrom<SpecFields> for MergeSpec {
    type Error = MergeError;

    fn try_from(f: SpecFields) -> Result<Self, MergeError> {
        Ok(MergeSpec {
            method: Method::parse(&f.method, f.compat)?,
            compat: f.compat,
            weights: f.weights,
            density: f.density,
            rank: f.rank,
            seed: f.seed,
            lambda: f.lambda,
            majority_sign: f.majority_sign,
            trim_scope: f.trim_scope,
            svd: f.svd,
            dtype: f.dtype,
            k: f.k,
            iters: f.iters,
            param_reweight: f.param_reweight,
            output_reweight: f.output_reweight,
            lambda_sim: f.lambda_sim,
            steps: f.steps,
            lr: f.lr,
        })
    }
}

impl MergeSpec {
    /// Reads a spec from JSON; the error names the field at fault. Parameters are checked
    /// against the method here; the number of inputs is checked by [`MergeSpec::validate`].
    pub fn from_json(value: serde_json::Value) -> Result<Self, MergeError> {
        serde_json::from_value(value).map_err(|e| MergeError::InvalidParam(e.to_string()))
    }
}

/// Parses one of a spec enum's JSON names (`"total"`, `"global"`, `"bf16"`, …): the CLI's flags
/// take exactly the values the JSON spec does.
pub fn parse_choice<T: DeserializeOwned>(raw: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(raw.to_string()))
        .map_err(|e| format!("{raw:?}: {e}"))
}
