//! Every kernel, in every specialisation the hosts build, translates with naga to each
//! backend wgpu may hand it to: SPIR-V (checked by `spirv-val` when installed), MSL, HLSL
//! and GLSL (ES 3.1 and desktop 4.3 compute, wgpu's GL floor). No device needed: a
//! shader one backend cannot take fails here instead of on a user's adapter.

use microunify::gpu::gemm;
use microunify::gpu::kernels::{self, Kernel};
use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{Module, ShaderStage};
use std::process::Command;

/// The Vulkan version wgpu's Vulkan backend needs at least (SPIR-V 1.3).
const SPIRV_TARGET_ENV: &str = "vulkan1.1";
const SPIRV_VERSION: (u8, u8) = (1, 3);
/// wgpu's GL backend takes GLSL ES 3.1 or desktop GL 4.3 for compute.
const GLSL_VERSIONS: [glsl::Version; 2] = [
    glsl::Version::Embedded {
        version: 310,
        is_webgl: false,
    },
    glsl::Version::Desktop(430),
];

/// One pipeline the hosts can build: a kernel and its override constants.
struct Variant {
    kernel: Kernel,
    constants: Vec<(&'static str, f64)>,
}

impl Variant {
    fn name(&self) -> String {
        let c: Vec<String> = self
            .constants
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        format!("{} [{}]", self.kernel.file, c.join(" "))
    }
}

/// The GEMM variants from the GEMM host's own choices; every other kernel is built with
/// its fixed constants only.
fn variants() -> Vec<Variant> {
    let gemm = gemm::all_variants();
    let mut out: Vec<Variant> = kernels::ALL
        .iter()
        .filter(|k| !gemm.iter().any(|v| v.kernel.file == k.file))
        .map(|k| Variant {
            kernel: *k,
            constants: k.constants.to_vec(),
        })
        .collect();
    out.extend(gemm.into_iter().map(|v| Variant {
        kernel: v.kernel,
        constants: v.constants,
    }));
    out
}

fn validate(module: &Module, what: &str) -> ModuleInfo {
    Validator::new(ValidationFlags::all(), Capabilities::default())
        .validate(module)
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

/// The variant's module with its overrides applied, as wgpu hands it to a backend.
fn specialise(variant: &Variant) -> (Module, ModuleInfo) {
    let name = variant.name();
    let src = variant.kernel.source();
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    let info = validate(&module, &name);
    let constants: naga::back::PipelineConstants = variant
        .constants
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let (m, i) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((ShaderStage::Compute, "main")),
        &constants,
    )
    .unwrap_or_else(|e| panic!("{name}: override constants: {e}"));
    (m.into_owned(), i.into_owned())
}

fn to_spirv(module: &Module, info: &ModuleInfo, name: &str) -> Vec<u32> {
    let options = spv::Options {
        lang_version: SPIRV_VERSION,
        ..Default::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: "main".into(),
    };
    spv::write_vec(module, info, &options, Some(&pipeline))
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"))
}

fn to_msl(module: &Module, info: &ModuleInfo, name: &str) {
    let options = msl::Options {
        lang_version: (2, 1),
        ..Default::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, "main".into())),
        ..Default::default()
    };
    msl::write_string(module, info, &options, &pipeline)
        .unwrap_or_else(|e| panic!("{name}: MSL: {e}"));
}

fn to_hlsl(module: &Module, info: &ModuleInfo, name: &str) {
    let options = hlsl::Options {
        shader_model: hlsl::ShaderModel::V6_0,
        ..Default::default()
    };
    let pipeline = hlsl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, "main".into())),
    };
    let mut out = String::new();
    hlsl::Writer::new(&mut out, &options, &pipeline)
        .write(module, info, None)
        .unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));
}

fn to_glsl(module: &Module, info: &ModuleInfo, version: glsl::Version, name: &str) -> String {
    let options = glsl::Options {
        version,
        ..Default::default()
    };
    let pipeline = glsl::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: "main".into(),
        multiview: None,
    };
    let mut out = String::new();
    glsl::Writer::new(
        &mut out,
        module,
        info,
        &options,
        &pipeline,
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut w| w.write())
    .unwrap_or_else(|e| panic!("{name}: GLSL {version}: {e}"));
    out
}

/// Vector `select`s on integers or booleans: naga writes them as GLSL `mix`, which takes
/// such operands only from desktop GL 4.5 on (or with GL_EXT_shader_integer_mix).
fn integer_vector_selects(module: &Module, info: &ModuleInfo) -> usize {
    let functions = module.functions.iter().map(|(h, f)| (f, &info[h])).chain(
        module
            .entry_points
            .iter()
            .zip(0..)
            .map(|(ep, i)| (&ep.function, info.get_entry_point(i))),
    );
    let mut n = 0;
    for (f, fi) in functions {
        for (_, e) in f.expressions.iter() {
            if let naga::Expression::Select { accept, .. } = e
                && let naga::TypeInner::Vector { scalar, .. } =
                    *fi[*accept].ty.inner_with(&module.types)
                && scalar.kind != naga::ScalarKind::Float
            {
                n += 1;
            }
        }
    }
    n
}

/// Runs spirv-val on each blob: `Ok(None)` when spirv-val is not installed, else the
/// first blob it rejects, with its report.
fn spirv_val(blobs: &[(String, Vec<u32>)]) -> Result<Option<()>, String> {
    if Command::new("spirv-val").arg("--version").output().is_err() {
        return Ok(None);
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, words)) in blobs.iter().enumerate() {
        let path = dir.path().join(format!("{i}.spv"));
        std::fs::write(&path, bytemuck::cast_slice::<u32, u8>(words)).unwrap();
        let out = Command::new("spirv-val")
            .args(["--target-env", SPIRV_TARGET_ENV])
            .arg(&path)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "{name}: spirv-val --target-env {SPIRV_TARGET_ENV}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(Some(()))
}

#[test]
fn every_variant_translates_to_every_backend() {
    let variants = variants();
    for k in kernels::ALL {
        assert!(
            variants.iter().any(|v| v.kernel.file == k.file),
            "{} has no variant",
            k.file
        );
    }
    // Translating a couple of thousand variants five ways: spread over the cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = variants.len().div_ceil(threads);
    let blobs: Vec<(String, Vec<u32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = variants
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut blobs = Vec::new();
                    for v in part {
                        let name = v.name();
                        let (module, info) = specialise(v);
                        assert_eq!(
                            integer_vector_selects(&module, &info),
                            0,
                            "{name}: a `select` on integer vectors needs integer `mix` in GLSL"
                        );
                        to_msl(&module, &info, &name);
                        to_hlsl(&module, &info, &name);
                        for version in GLSL_VERSIONS {
                            let glsl = to_glsl(&module, &info, version, &name);
                            assert!(
                                !glsl.contains("GL_EXT_shader_integer_mix"),
                                "{name}: GLSL {version} asks for GL_EXT_shader_integer_mix"
                            );
                        }
                        blobs.push((name.clone(), to_spirv(&module, &info, &name)));
                    }
                    blobs
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let checked = match spirv_val(&blobs) {
        Ok(Some(())) => format!("spirv-val --target-env {SPIRV_TARGET_ENV} passed on all"),
        Ok(None) => "spirv-val not installed, skipped".to_string(),
        Err(e) => panic!("{e}"),
    };
    eprintln!(
        "{} variants translated to SPIR-V, MSL, HLSL, GLSL ES 3.1 and GLSL 4.3; {checked}",
        variants.len()
    );
}

#[test]
fn an_integer_vector_select_is_caught() {
    // Guards the check above: the expression naga writes as an integer `mix`.
    let src = "@group(0) @binding(0) var<storage, read_write> o: array<vec4<u32>>;
@compute @workgroup_size(1) fn main() {
    o[0] = select(vec4<u32>(0u), vec4<u32>(1u), vec4<f32>(o[1]) < vec4<f32>(0.0));
}";
    let module = naga::front::wgsl::parse_str(src).unwrap();
    let info = validate(&module, "probe");
    assert_eq!(integer_vector_selects(&module, &info), 1);
    let glsl = to_glsl(&module, &info, GLSL_VERSIONS[1], "probe");
    assert!(glsl.contains("mix("), "{glsl}");
}

#[test]
fn spirv_val_rejects_a_broken_blob() {
    // Guards the spirv-val step: a blob cut short must be reported, naming it.
    let v = &variants()[0];
    let (module, info) = specialise(v);
    let mut words = to_spirv(&module, &info, &v.name());
    words.truncate(words.len() - 3);
    match spirv_val(&[("cut".into(), words)]) {
        Ok(None) => eprintln!("spirv-val not installed, skipped"),
        Ok(Some(())) => panic!("spirv-val accepted a blob cut short"),
        Err(e) => assert!(e.starts_with("cut: spirv-val"), "{e}"),
    }
}
