//! Will this adapter load where users serve it? Checks computed from the LoRA summary alone, each
//! with the reason when it fails (shown as badges on the web pages and in the version resource).
//!
//! The rules are the serving engines' own (see `reference/registry-anchors.md` §4): vLLM refuses
//! DoRA, non-empty `modules_to_save` and ranks above its `--max-lora-rank`, whose allowed values
//! are a fixed list; LoRAX's fast SGMV kernels cover ranks 8 to 128 and other ranks take a slower
//! path; PEFT loads every LoRA this registry accepts (DoRA and rsLoRA need recent releases);
//! Quiver's merges refuse DoRA inputs.

use serde::Serialize;

use crate::summary::LoraSummary;

/// The values vLLM accepts for `--max-lora-rank`.
pub const VLLM_MAX_LORA_RANKS: [u64; 9] = [1, 8, 16, 32, 64, 128, 256, 320, 512];

/// Ranks LoRAX runs on its custom SGMV kernels.
pub const LORAX_FAST_RANKS: std::ops::RangeInclusive<u64> = 8..=128;

/// Target names that are embeddings or the output head, where current vLLM releases apply no
/// LoRA.
const EMBEDDING_TARGETS: [&str; 5] = [
    "embed_tokens",
    "lm_head",
    "wte",
    "word_embeddings",
    "embed_in",
];

/// One serving target's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    pub ok: bool,
    /// Why, in a sentence (also when it passes: the condition that holds).
    pub reason: String,
}

/// The verdict for every target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Compatibility {
    pub vllm: Check,
    /// The smallest `--max-lora-rank` that loads it in vLLM, if any does.
    pub vllm_max_lora_rank: Option<u64>,
    pub lorax: Check,
    pub peft: Check,
    /// Whether Quiver's merge methods take it as an input.
    pub merge: Check,
}

/// The largest rank of any module (falls back to `r` and `rank_pattern` for summaries stored
/// before `max_rank` was recorded).
pub fn max_rank(s: &LoraSummary) -> u64 {
    if s.max_rank > 0 {
        return s.max_rank;
    }
    s.rank_pattern.values().copied().fold(s.r, u64::max)
}

fn check(ok: bool, reason: impl Into<String>) -> Check {
    Check {
        ok,
        reason: reason.into(),
    }
}

impl Compatibility {
    pub fn of(s: &LoraSummary) -> Self {
        let rank = max_rank(s);
        let vllm_rank = VLLM_MAX_LORA_RANKS.iter().copied().find(|&m| m >= rank);
        let embeddings: Vec<&str> = s
            .target_modules
            .iter()
            .map(String::as_str)
            .filter(|t| EMBEDDING_TARGETS.contains(t))
            .collect();
        let vllm = if s.use_dora {
            check(false, "vLLM does not support DoRA adapters")
        } else if !s.modules_to_save.is_empty() {
            check(
                false,
                format!(
                    "vLLM refuses adapters with modules_to_save ({})",
                    s.modules_to_save.join(", ")
                ),
            )
        } else if s.target_modules.is_empty() {
            check(false, "no target modules: vLLM would serve the base model")
        } else if !embeddings.is_empty() {
            check(
                false,
                format!(
                    "vLLM applies no LoRA to embeddings or the output head ({})",
                    embeddings.join(", ")
                ),
            )
        } else {
            match vllm_rank {
                Some(m) => check(true, format!("loads with --max-lora-rank {m} or more")),
                None => check(
                    false,
                    format!(
                        "rank {rank} is above vLLM's largest --max-lora-rank ({})",
                        VLLM_MAX_LORA_RANKS[VLLM_MAX_LORA_RANKS.len() - 1]
                    ),
                ),
            }
        };
        let lorax = if s.use_dora {
            check(false, "LoRAX does not support DoRA adapters")
        } else if LORAX_FAST_RANKS.contains(&rank) {
            check(
                true,
                format!("rank {rank} runs on LoRAX's SGMV fast path (8 to 128)"),
            )
        } else {
            check(
                true,
                format!("loads, but rank {rank} is outside LoRAX's SGMV fast path (8 to 128)"),
            )
        };
        let peft = match (s.use_dora, s.use_rslora) {
            (true, _) => check(true, "loads with PEFT 0.9 or later (DoRA)"),
            (false, true) => check(true, "loads with PEFT 0.7 or later (rsLoRA)"),
            (false, false) => check(true, "loads with PEFT's LoraConfig"),
        };
        let merge = if s.use_dora {
            check(
                false,
                "DoRA adapters cannot be merged: their magnitudes do not combine linearly",
            )
        } else {
            check(true, "every merge method takes it as an input")
        };
        Self {
            vllm_max_lora_rank: vllm_rank.filter(|_| vllm.ok),
            vllm,
            lorax,
            peft,
            merge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn summary(r: u64) -> LoraSummary {
        LoraSummary {
            peft_type: "LORA".into(),
            r,
            lora_alpha: 16.0,
            use_rslora: false,
            use_dora: false,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            n_params: 0,
            dtype: "F32".into(),
            size: 0,
            n_modules: 2,
            base_model: None,
            module_shapes: BTreeMap::new(),
            modules_to_save: Vec::new(),
            max_rank: r,
        }
    }

    #[test]
    fn vllm_needs_the_smallest_allowed_max_lora_rank_at_or_above_the_rank() {
        for (r, want) in [(1, 1), (4, 8), (8, 8), (9, 16), (300, 320), (512, 512)] {
            let c = Compatibility::of(&summary(r));
            assert!(c.vllm.ok, "r={r}: {}", c.vllm.reason);
            assert_eq!(c.vllm_max_lora_rank, Some(want), "r={r}");
            assert!(c.vllm.reason.contains(&want.to_string()));
        }
        let c = Compatibility::of(&summary(1024));
        assert!(!c.vllm.ok);
        assert_eq!(c.vllm_max_lora_rank, None);
        assert!(c.vllm.reason.contains("1024"), "{}", c.vllm.reason);
    }

    #[test]
    fn rank_pattern_counts_when_max_rank_is_missing() {
        let mut s = summary(8);
        s.max_rank = 0;
        s.rank_pattern.insert("q_proj".into(), 64);
        assert_eq!(max_rank(&s), 64);
        assert_eq!(Compatibility::of(&s).vllm_max_lora_rank, Some(64));
    }

    #[test]
    fn each_failure_says_why() {
        let mut dora = summary(8);
        dora.use_dora = true;
        let c = Compatibility::of(&dora);
        assert!(!c.vllm.ok && c.vllm.reason.contains("DoRA"));
        assert!(!c.merge.ok && c.merge.reason.contains("DoRA"));
        assert!(!c.lorax.ok);
        assert!(c.peft.ok && c.peft.reason.contains("0.9"));
        assert_eq!(c.vllm_max_lora_rank, None);

        let mut saved = summary(8);
        saved.modules_to_save = vec!["score".into()];
        let c = Compatibility::of(&saved);
        assert!(!c.vllm.ok && c.vllm.reason.contains("score"));
        assert!(c.merge.ok);

        let mut emb = summary(8);
        emb.target_modules.push("lm_head".into());
        assert!(Compatibility::of(&emb).vllm.reason.contains("lm_head"));

        let slow = Compatibility::of(&summary(256)).lorax;
        assert!(slow.ok && slow.reason.contains("outside"));
        let fast = Compatibility::of(&summary(16)).lorax;
        assert!(fast.ok && !fast.reason.contains("outside"));
    }
}
