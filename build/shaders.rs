//! Reflection of the WGSL kernels at build time: every `shaders/*.wgsl` file is either a
//! kernel (it has an entry point) or a prelude that some kernel names on its first line:
//!
//! ```text
//! // requires: common.wgsl chunk_pieces.wgsl
//! ```
//!
//! Each kernel is composed with its preludes (in the order listed), parsed and validated
//! by naga; a shader that fails stops the build with its file name and naga's rendered
//! diagnostic. The generated `$OUT_DIR/kernels.rs` holds, per kernel, the composed source,
//! its override names, the bindings its entry point uses and its workgroup size, so that
//! the library compiles exactly what was validated here and checks its bind groups against
//! what the shader declares.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

const SHADER_DIR: &str = "shaders";
/// The directive on a kernel's first line naming its preludes.
const REQUIRES: &str = "// requires:";
/// The one entry point of every kernel (the runtime compiles it by this name).
const ENTRY_POINT: &str = "main";
/// Generated file, included by src/gpu/kernels/reflection.rs.
pub const OUTPUT: &str = "kernels.rs";

struct Binding {
    group: u32,
    binding: u32,
    name: String,
    kind: &'static str,
}

/// A named WGSL struct: size, and each member's name and byte offset.
#[derive(Debug, PartialEq, Eq)]
struct Struct {
    name: String,
    size: u32,
    members: Vec<(String, u32)>,
}

struct Kernel {
    stem: String,
    file: String,
    preludes: Vec<String>,
    source: String,
    overrides: Vec<String>,
    bindings: Vec<Binding>,
    workgroup_size: Vec<String>,
    /// Named structs of the composed module: size in bytes and each member's name and
    /// offset (for the Rust twins).
    structs: Vec<Struct>,
}

/// Reflects every shader and writes the generated file; a failure is a message for the
/// build's output, naming the file.
pub fn generate(manifest_dir: &Path, out_dir: &Path) -> Result<(), String> {
    let dir = manifest_dir.join(SHADER_DIR);
    println!("cargo:rerun-if-changed={}", dir.display());
    let files = wgsl_files(&dir)?;
    for name in files.keys() {
        println!("cargo:rerun-if-changed={}", dir.join(name).display());
    }
    let required: BTreeMap<&str, Vec<String>> = files
        .iter()
        .map(|(name, text)| Ok((name.as_str(), requires(name, text, &files)?)))
        .collect::<Result<_, String>>()?;
    let preludes: Vec<&str> = files
        .keys()
        .map(String::as_str)
        .filter(|f| required.values().any(|r| r.iter().any(|p| p == f)))
        .collect();
    let mut kernels = Vec::new();
    for (name, text) in &files {
        if preludes.contains(&name.as_str()) {
            if !required[name.as_str()].is_empty() {
                return Err(format!(
                    "shaders/{name}: a prelude cannot require others; list them in the kernels that require it"
                ));
            }
            continue;
        }
        kernels.push(reflect(name, text, &required[name.as_str()], &files)?);
    }
    let code = render(&kernels, &files, &preludes);
    std::fs::write(out_dir.join(OUTPUT), code)
        .map_err(|e| format!("writing {}: {e}", out_dir.join(OUTPUT).display()))
}

fn wgsl_files(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().is_none_or(|e| e != "wgsl") {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Err(format!("{}: not a UTF-8 file name", path.display()));
        };
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        files.insert(name.to_string(), text);
    }
    Ok(files)
}

/// The preludes a file's first line names (none without the directive).
fn requires(
    name: &str,
    text: &str,
    files: &BTreeMap<String, String>,
) -> Result<Vec<String>, String> {
    let Some(list) = text.lines().next().and_then(|l| l.strip_prefix(REQUIRES)) else {
        return Ok(Vec::new());
    };
    let list: Vec<String> = list.split_whitespace().map(str::to_string).collect();
    for p in &list {
        if !files.contains_key(p) {
            return Err(format!(
                "shaders/{name}: requires {p}, which is not in shaders/"
            ));
        }
        if p == name {
            return Err(format!("shaders/{name}: requires itself"));
        }
    }
    Ok(list)
}

fn reflect(
    name: &str,
    text: &str,
    preludes: &[String],
    files: &BTreeMap<String, String>,
) -> Result<Kernel, String> {
    let pieces: Vec<&str> = preludes
        .iter()
        .map(|p| files[p].as_str())
        .chain([text])
        .collect();
    let source = pieces.join("\n");
    let path = if preludes.is_empty() {
        format!("shaders/{name}")
    } else {
        format!("shaders/{name} (after {})", preludes.join(", "))
    };
    let origin = |at: Option<naga::SourceLocation>| {
        at.map(|l| where_in(&pieces, preludes, name, l.offset as usize))
            .unwrap_or_default()
    };
    let module = naga::front::wgsl::parse_str(&source)
        .map_err(|e| e.emit_to_string_with_path(&source, &path) + &origin(e.location(&source)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .map_err(|e| e.emit_to_string_with_path(&source, &path) + &origin(e.location(&source)))?;
    let (index, entry) = match module.entry_points.as_slice() {
        [] => {
            return Err(format!(
                "shaders/{name}: no entry point, and no kernel requires it as a prelude"
            ));
        }
        [e] if e.name == ENTRY_POINT && e.stage == naga::ShaderStage::Compute => (0, e),
        _ => {
            return Err(format!(
                "shaders/{name}: a kernel has exactly one entry point, a compute `fn {ENTRY_POINT}`"
            ));
        }
    };
    let used = info.get_entry_point(index);
    let mut bindings = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        if used[handle].is_empty() {
            continue;
        }
        let var_name = var.name.clone().unwrap_or_default();
        let kind = match var.space {
            naga::AddressSpace::Uniform => "Uniform",
            naga::AddressSpace::Storage { access }
                if access.contains(naga::StorageAccess::STORE) =>
            {
                "StorageReadWrite"
            }
            naga::AddressSpace::Storage { .. } => "StorageReadOnly",
            other => {
                return Err(format!(
                    "shaders/{name}: binding {} `{var_name}` is in address space {other:?}; the host binds buffers only",
                    rb.binding
                ));
            }
        };
        bindings.push(Binding {
            group: rb.group,
            binding: rb.binding,
            name: var_name,
            kind,
        });
    }
    bindings.sort_by_key(|b| (b.group, b.binding));
    let overrides: Vec<String> = module
        .overrides
        .iter()
        .filter_map(|(_, o)| o.name.clone())
        .collect();
    let mut workgroup_size = Vec::new();
    for d in 0..3 {
        let by_override = entry.workgroup_size_overrides.and_then(|o| o[d]);
        workgroup_size.push(match by_override {
            None => format!("WorkgroupDim::Literal({})", entry.workgroup_size[d]),
            Some(h) => match module.global_expressions[h] {
                naga::Expression::Override(o) => {
                    let o = module.overrides[o].name.clone().unwrap_or_default();
                    format!("WorkgroupDim::Override({o:?})")
                }
                _ => {
                    return Err(format!(
                        "shaders/{name}: workgroup size dimension {d} is an expression; use a literal or one override"
                    ));
                }
            },
        });
    }
    let structs = module
        .types
        .iter()
        .filter_map(|(_, t)| match (&t.name, &t.inner) {
            (Some(n), naga::TypeInner::Struct { span, members }) => Some(Struct {
                name: n.clone(),
                size: *span,
                members: members
                    .iter()
                    .map(|m| (m.name.clone().unwrap_or_default(), m.offset))
                    .collect(),
            }),
            _ => None,
        })
        .collect();
    Ok(Kernel {
        structs,
        stem: name.trim_end_matches(".wgsl").to_string(),
        file: name.to_string(),
        preludes: preludes.to_vec(),
        source,
        overrides,
        bindings,
        workgroup_size,
    })
}

/// Which file (and line of it) a byte offset of the composed source falls in, for a
/// diagnostic whose line numbers count the preludes too.
fn where_in(pieces: &[&str], preludes: &[String], kernel: &str, offset: usize) -> String {
    let mut start = 0;
    for (i, piece) in pieces.iter().enumerate() {
        // Pieces are joined with one newline.
        let end = start + piece.len() + 1;
        if offset < end || i + 1 == pieces.len() {
            let line = piece[..(offset - start).min(piece.len())]
                .matches('\n')
                .count()
                + 1;
            let file = preludes.get(i).map_or(kernel, String::as_str);
            return format!("(the error is at shaders/{file}:{line})\n");
        }
        start = end;
    }
    String::new()
}

fn render(kernels: &[Kernel], files: &BTreeMap<String, String>, preludes: &[&str]) -> String {
    let mut out =
        String::from("// Generated by build.rs (build/shaders.rs) from shaders/*.wgsl.\n\n");
    for k in kernels {
        let bindings: String = k
            .bindings
            .iter()
            .map(|b| {
                format!(
                    "        ReflectedBinding {{ group: {}, binding: {}, name: {:?}, kind: BindingKind::{} }},\n",
                    b.group, b.binding, b.name, b.kind
                )
            })
            .collect();
        let _ = write!(
            out,
            "pub const {const_name}: Reflection = Reflection {{\n    name: {stem:?},\n    file: {file:?},\n    preludes: &{preludes:?},\n    source: {source:?},\n    overrides: &{overrides:?},\n    bindings: &[\n{bindings}    ],\n    workgroup_size: [{wg}],\n}};\n\n",
            const_name = k.stem.to_uppercase(),
            stem = k.stem,
            file = k.file,
            preludes = k.preludes,
            source = k.source,
            overrides = k.overrides,
            wg = k.workgroup_size.join(", "),
        );
    }
    // One layout per struct name across the kernels (a prelude's struct is the same in
    // each kernel that requires it); two layouts under one name would leave a twin
    // checked against one of them only.
    let mut structs: BTreeMap<&str, &Struct> = BTreeMap::new();
    for s in kernels.iter().flat_map(|k| &k.structs) {
        if let Some(other) = structs.insert(&s.name, s)
            && other != s
        {
            panic!(
                "shaders/: two different layouts of struct {} (rename one)",
                s.name
            );
        }
    }
    let structs: Vec<String> = structs
        .values()
        .map(|s| {
            let members: Vec<String> = s
                .members
                .iter()
                .map(|(n, o)| format!("({n:?}, {o})"))
                .collect();
            format!(
                "ReflectedStruct {{ name: {:?}, size: {}, members: &[{}] }}",
                s.name,
                s.size,
                members.join(", ")
            )
        })
        .collect();
    let all: Vec<String> = kernels.iter().map(|k| k.stem.to_uppercase()).collect();
    let files: Vec<&String> = files.keys().collect();
    let _ = write!(
        out,
        "/// Every kernel under shaders/, by file name.\npub const KERNELS: &[&Reflection] = &[{}];\n\n\
         /// Every prelude (a file that kernels require and that has no entry point).\npub const PRELUDES: &[&str] = &{preludes:?};\n\n\
         /// Every `.wgsl` file under shaders/ when the crate was built.\npub const WGSL_FILES: &[&str] = &{files:?};\n\n\
         /// Every named struct of the kernels: its size in bytes and each member's name and\n/// offset (naga's layout).\npub const STRUCTS: &[ReflectedStruct] = &[{structs}];\n",
        all.iter()
            .map(|c| format!("&{c}"))
            .collect::<Vec<_>>()
            .join(", "),
        structs = structs.join(", "),
    );
    out
}
