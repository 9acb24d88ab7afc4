//! Compiles the compute shaders in `src/kernels/` from GLSL to SPIR-V with glslang (built
//! from source by the `glslang` crate), into `$OUT_DIR/<name>.spv`, which `src/kernels.rs`
//! embeds. Nothing prebuilt is committed: the GLSL is the source.
//!
//! `matvec.comp` is compiled once per weight type: its `#include "WEIGHT_TYPE"` line is
//! replaced by `dequant/<type>.glsl` (the type's `dot32`). Likewise `matvec_fast.comp` (the
//! fast numeric mode's integer-dot matvec) once per quantized type with `fast/<type>.glsl`
//! (its `idot32`). A type file may itself `#include "<file>"` a helper, named relative to its
//! own folder (IQ4_NL and IQ4_XS share `iq4_grid.glsl`, Q4_K and Q5_K
//! `dequant/k4_scale_min.glsl`, both Q3_K files `dequant/q3k_scale.glsl`): such a line is
//! replaced by that file's text, one level deep. The two matvec shaders' own `#include`
//! lines (`tile_io.glsl`, `tile_main.glsl`: the route tiles both share) are spliced the same
//! way, after the weight type.

use std::path::{Path, PathBuf};

use glslang::{
    Compiler, CompilerOptions, ShaderInput, ShaderSource, ShaderStage, SpirvVersion, Target,
    VulkanVersion,
};

/// The weight types with a dequantizing matvec shader (file stems of `dequant/*.glsl`).
const WEIGHT_TYPES: [&str; 15] = [
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k",
    "q6_k", "iq4_nl", "iq4_xs",
];

/// The weight types with an integer-dot matvec shader for the fast mode (file stems of
/// `fast/*.glsl`; F32, F16 and BF16 stay on the f32 shaders in both modes, as on the CPU).
const FAST_WEIGHT_TYPES: [&str; 8] = [
    "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs",
];

/// No preprocessor definitions (the weight type is spliced in as text).
const NO_DEFINES: Option<&[(&str, Option<&str>)]> = None;

fn compile(compiler: &Compiler, name: &str, text: String, out: &Path) {
    let source = ShaderSource::from(text);
    let options = CompilerOptions {
        target: Target::Vulkan {
            version: VulkanVersion::Vulkan1_1,
            spirv_version: SpirvVersion::SPIRV1_3,
        },
        ..CompilerOptions::default()
    };
    let input = ShaderInput::new(&source, ShaderStage::Compute, &options, NO_DEFINES, None)
        .unwrap_or_else(|e| panic!("shader {name}: {e}"));
    let shader = compiler
        .create_shader(input)
        .unwrap_or_else(|e| panic!("shader {name}: {e}"));
    let words = shader
        .compile()
        .unwrap_or_else(|e| panic!("shader {name}: {e}"));
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(out.join(format!("{name}.spv")), bytes)
        .unwrap_or_else(|e| panic!("writing {name}.spv: {e}"));
}

fn read(path: &Path) -> String {
    println!("cargo:rerun-if-changed={}", path.display());
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with each `#include "<file>"` line replaced by the text of `dir/<file>`.
fn splice_includes(dir: &Path, text: &str) -> String {
    text.lines()
        .map(|line| {
            match line
                .trim()
                .strip_prefix("#include \"")
                .and_then(|rest| rest.strip_suffix('"'))
            {
                Some(file) => read(&dir.join(file)),
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("src/kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let compiler = Compiler::acquire().expect("glslang initializes once per process");
    let matvec = read(&dir.join("matvec.comp"));
    assert!(
        matvec.contains("#include \"WEIGHT_TYPE\""),
        "matvec.comp lost its WEIGHT_TYPE include line"
    );
    for ty in WEIGHT_TYPES {
        let dequant = splice_includes(
            &dir.join("dequant"),
            &read(&dir.join(format!("dequant/{ty}.glsl"))),
        );
        let text = splice_includes(&dir, &matvec.replace("#include \"WEIGHT_TYPE\"", &dequant));
        compile(compiler, &format!("matvec_{ty}"), text, &out);
    }
    let matvec_fast = read(&dir.join("matvec_fast.comp"));
    assert!(
        matvec_fast.contains("#include \"WEIGHT_TYPE\""),
        "matvec_fast.comp lost its WEIGHT_TYPE include line"
    );
    for ty in FAST_WEIGHT_TYPES {
        let idot = splice_includes(
            &dir.join("fast"),
            &read(&dir.join(format!("fast/{ty}.glsl"))),
        );
        let text = splice_includes(
            &dir,
            &matvec_fast.replace("#include \"WEIGHT_TYPE\"", &idot),
        );
        compile(compiler, &format!("matvec_fast_{ty}"), text, &out);
    }
    for name in [
        "swiglu", "combine", "quantize", "rms_norm", "rope", "gather", "attend", "kv_store",
    ] {
        compile(
            compiler,
            name,
            read(&dir.join(format!("{name}.comp"))),
            &out,
        );
    }
}
