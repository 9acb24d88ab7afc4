//! The fast numeric mode through the whole device path (quantize, integer-dot gate and up
//! matvecs, SwiGLU, quantize, integer-dot down matvec, weighted add) on Vulkan device 0: the
//! mode is the calling model's, per call, on one `VulkanCompute`.

mod common;

use moe_kernels::{GgmlType, NumericMode};
use moe_model::forward::{CpuCompute, ExpertCompute, Route};
use moe_model::model::Model;
use moe_vulkan::VulkanCompute;

/// Largest accepted |device - CPU| of one routed output value in exact mode (as in
/// `refusals.rs`).
const EXACT_ABS_TOL: f32 = 1e-5;
/// Largest accepted |fast - exact| of one routed output value, relative to the largest
/// routed contribution |exact - start|: int8 activations (a step of amax / 127 per 32
/// values, twice: before gate/up and before down) move outputs by about 1% here; a wiring
/// error (a matvec reading the wrong buffer or unquantized values) moves them by its size.
const FAST_REL_TOL: f32 = 0.05;

fn routes() -> Vec<Route> {
    let route = |token, expert, weight| Route {
        token,
        expert,
        weight,
    };
    vec![
        route(0, 3, 0.5),
        route(1, 383, 1.5),
        route(2, 3, -0.25),
        route(2, 200, 1.0),
        route(0, 64, 2.0),
        route(1, 64, 0.75),
    ]
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// On both kq fixture files (llama-quantize's Q4_K_M and Q2_K mixes), one `VulkanCompute`:
/// - with the model in exact mode, gives the CPU exact result within `EXACT_ABS_TOL` (before
///   and after a fast call: the exact path is untouched by the fast one);
/// - with the model in fast mode, differs from its exact result by more than the f32
///   rounding between exact implementations (10 · `EXACT_ABS_TOL`: the integer-dot shaders
///   ran) and by at most `FAST_REL_TOL` of the routed contribution, and is as close to the CPU's fast
///   mode (which quantizes per 256 values for the k-quants, so not value for value).
#[test]
fn fast_mode_computes_quantized_experts_with_integer_dot_products() {
    let Some(device) =
        common::device_or_skip("fast_mode_computes_quantized_experts_with_integer_dot_products")
    else {
        return;
    };
    for file in ["kimi-k25-kq-Q4_K_M.gguf", "kimi-k25-kq-Q2_K.gguf"] {
        let path = moe_devdata::fixtures::fixtures_dir()
            .join("kimi-k25-kq")
            .join(file);
        let exact = Model::open(&path).unwrap();
        let fast = Model::open(&path).unwrap().with_mode(NumericMode::Fast);
        let vk = VulkanCompute::new(device.clone(), &exact).unwrap();
        assert!(
            vk.has_fast_shaders(),
            "{}: no integer-dot shaders",
            device.info.name
        );
        let moe = exact.layers[1].moe.as_ref().unwrap();
        let types: Vec<&str> = [&moe.gate_exps, &moe.up_exps, &moe.down_exps]
            .iter()
            .map(|s| exact.expert_mat(s, 0).unwrap().ty().name())
            .collect();
        for ty in &types {
            assert!(
                moe_vulkan::fast_types().any(|t| t.name() == *ty),
                "{file}: {ty} has no fast shader"
            );
        }
        let d = exact.cfg.n_embd;
        let h: Vec<f32> = (0..3 * d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0)
            .collect();
        let start: Vec<f32> = (0..3 * d).map(|i| (i % 7) as f32 * 0.1).collect();
        let run = |c: &dyn ExpertCompute, m: &Model| {
            let mut out = start.clone();
            c.apply_routes(m, 1, &h, &routes(), &mut out).unwrap();
            out
        };
        let cpu_exact = run(&CpuCompute, &exact);
        let cpu_fast = run(&CpuCompute, &fast);
        let vk_exact = run(&vk, &exact);
        let vk_fast = run(&vk, &fast);
        let vk_exact_again = run(&vk, &exact);
        let moved = max_diff(&cpu_exact, &start);
        let (fast_exact, fast_cpu_fast, cpu_fast_exact) = (
            max_diff(&vk_fast, &vk_exact),
            max_diff(&vk_fast, &cpu_fast),
            max_diff(&cpu_fast, &cpu_exact),
        );
        println!(
            "{file} (gate {}, up {}, down {}): largest routed contribution {moved:.3e}; |vulkan fast - vulkan exact| {fast_exact:.2e}, |vulkan fast - cpu fast| {fast_cpu_fast:.2e}, |cpu fast - cpu exact| {cpu_fast_exact:.2e}",
            types[0], types[1], types[2]
        );
        assert!(moved > 1e-2, "{file}: the routes added nothing");
        for (what, v) in [("before", &vk_exact), ("after", &vk_exact_again)] {
            let e = max_diff(v, &cpu_exact);
            assert!(
                e <= EXACT_ABS_TOL,
                "{file}: exact {what} a fast call: {e:e}"
            );
        }
        assert!(
            fast_exact > 10.0 * EXACT_ABS_TOL,
            "{file}: the fast mode gave the exact result ({fast_exact:e} apart): no integer-dot shader ran"
        );
        assert!(
            fast_exact <= FAST_REL_TOL * moved && fast_cpu_fast <= FAST_REL_TOL * moved,
            "{file}: fast vs exact {fast_exact:e}, vs CPU fast {fast_cpu_fast:e}, contribution {moved:e}"
        );
    }
}

/// F16 experts have no integer-dot shader: in fast mode they are computed by the f32 shader,
/// bit for bit as in exact mode (as the CPU's fast mode computes F16, F32 and BF16 exactly).
#[test]
fn fast_mode_keeps_float_experts_on_the_f32_shader() {
    let Some(device) = common::device_or_skip("fast_mode_keeps_float_experts_on_the_f32_shader")
    else {
        return;
    };
    let path =
        std::env::temp_dir().join(format!("moe-vulkan-fast-f16-{}.gguf", std::process::id()));
    moe_devdata::synth::synthesize(
        &moe_devdata::synth::SynthOptions {
            preset: moe_devdata::synth::SynthPreset::Kq,
            ty: GgmlType::F16,
            layers: Some(2),
            ..Default::default()
        },
        &path,
    )
    .unwrap();
    let exact = Model::open(&path).unwrap();
    let fast = Model::open(&path).unwrap().with_mode(NumericMode::Fast);
    std::fs::remove_file(&path).ok();
    let vk = VulkanCompute::new(device, &exact).unwrap();
    let (a, b) = exact_then_fast(&vk, &exact, &fast);
    assert_eq!(a, b, "F16 experts: fast mode differs from exact mode");
}

/// On a device without integer dot products (here device 0 opened with the feature left
/// disabled), the fast mode falls back to the f32 shaders: no integer-dot pipeline is built,
/// fast-mode experts equal exact-mode ones bit for bit, and the fast matvec tool refuses
/// with an error naming `shaderIntegerDotProduct`.
#[test]
fn without_integer_dot_products_the_fast_mode_uses_the_f32_shaders() {
    if common::device_or_skip("without_integer_dot_products_the_fast_mode_uses_the_f32_shaders")
        .is_none()
    {
        return;
    }
    let device = moe_vulkan::Device::open_without_integer_dot_product(0).unwrap();
    assert!(!device.has_integer_dot_product());
    let path = moe_devdata::fixtures::fixtures_dir().join("kimi-k25-kq/kimi-k25-kq-Q2_K.gguf");
    let exact = Model::open(&path).unwrap();
    let fast = Model::open(&path).unwrap().with_mode(NumericMode::Fast);
    let vk = VulkanCompute::new(device.clone(), &exact).unwrap();
    assert!(!vk.has_fast_shaders());
    let (a, b) = exact_then_fast(&vk, &exact, &fast);
    assert_eq!(
        a, b,
        "fast mode without integer dot products differs from exact"
    );

    let mut mv = moe_vulkan::Matvec::new(&device).unwrap();
    let bytes = vec![0u8; GgmlType::Q8_0.row_bytes(64).unwrap() * 2];
    let q = moe_kernels::QMatrix::new(GgmlType::Q8_0, 2, 64, &bytes).unwrap();
    let err = mv
        .matmul_fast("m", &q, &[0.5; 64], 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shaderIntegerDotProduct"), "{err}");
    let err = mv.quantize(&[0.5; 64], 64).unwrap_err().to_string();
    assert!(err.contains("shaderIntegerDotProduct"), "{err}");
}

/// The routes of layer 1 over 3 fixed input rows through `vk`, in the exact model's mode and
/// then the fast one's; the exact result must add something.
fn exact_then_fast(vk: &VulkanCompute, exact: &Model, fast: &Model) -> (Vec<f32>, Vec<f32>) {
    let d = exact.cfg.n_embd;
    let h: Vec<f32> = (0..3 * d)
        .map(|i| ((i * 13 % 89) as f32 - 44.0) / 60.0)
        .collect();
    let (mut a, mut b) = (vec![0f32; 3 * d], vec![0f32; 3 * d]);
    vk.apply_routes(exact, 1, &h, &routes(), &mut a).unwrap();
    vk.apply_routes(fast, 1, &h, &routes(), &mut b).unwrap();
    assert!(a.iter().any(|v| *v != 0.0), "the routes added nothing");
    (a, b)
}
