//! Links the `capstan` binary with packed relative relocations (DT_RELR).
//!
//! `capstan` is a position-independent executable, so the dynamic loader relocates its pointers at every start.
//! Stored the classic way, those ~100,000 relocations take 2.5 MB that every start reads and keeps resident;
//! packed, they take a few kilobytes. glibc 2.36 and binutils 2.38 or later understand the packed form.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
