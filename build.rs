//! Embeds every shipped driver file (drivers/*.toml) in the binary, so `labgate demo` runs
//! without a drivers directory and a new driver file needs no code change.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=drivers");
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dir = manifest.join("drivers");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = String::from(
        "/// (file name, text) of every shipped driver, in name order.\npub static EMBEDDED_DRIVERS: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push_str(&format!(
            "    ({:?}, include_str!({:?})),\n",
            format!("drivers/{name}"),
            f.display().to_string()
        ));
    }
    out.push_str("];\n");
    let out_path = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("embedded_drivers.rs");
    std::fs::write(out_path, out).expect("write embedded_drivers.rs");
}
