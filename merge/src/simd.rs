//! Hot entry-wise loops compiled for the CPU they run on: the default build targets baseline
//! x86-64 (SSE2, 4 floats a step), so [`multiversion!`] also compiles a loop for AVX-512 and for
//! AVX2 and picks one at run time. The loops are plain Rust that LLVM vectorises; the wider
//! versions round exactly as the baseline one (no FMA contraction: Rust never fuses `a * b + c`
//! on its own), so results do not depend on the CPU.

/// Defines `fn $name(args) -> ret` whose body is compiled three times — AVX-512, AVX2 + FMA and
/// baseline — and dispatched on the CPU's features (detected once by std and cached).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(unsafe_code)]
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[allow(unsafe_code)]
                #[target_feature(enable = "avx2,fma,bmi1,bmi2")]
                unsafe fn mid($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has every feature `wide` was compiled for.
                    #[allow(unsafe_code)]
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("bmi1")
                    && std::arch::is_x86_feature_detected!("bmi2")
                {
                    // SAFETY: the CPU has every feature `mid` was compiled for.
                    #[allow(unsafe_code)]
                    return unsafe { mid($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use multiversion;
