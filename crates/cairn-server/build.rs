//! Compiles the C shim that gives INCRBYFLOAT Redis's `long double` arithmetic
//! (see `src/long_double.rs`).

fn main() {
    println!("cargo:rerun-if-changed=csrc/longdouble.c");
    cc::Build::new()
        .file("csrc/longdouble.c")
        .warnings(true)
        .compile("cairn_longdouble");
}
