//! Symbol demangling: Rust (legacy and v0, without the hash suffix), then C++ (Itanium ABI).

use std::borrow::Cow;

/// Demangles `name` for display.
///
/// Rust names lose their `::h0123456789abcdef` hash suffix; C++ names are demangled with
/// `cpp_demangle`; anything else (C names, names that fail to demangle) comes back unchanged.
pub fn demangle(name: &str) -> Cow<'_, str> {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        // `{:#}` is the alternate form: no hash suffix.
        return Cow::Owned(format!("{d:#}"));
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(s) = sym.demangle() {
                return Cow::Owned(s);
            }
        }
    }
    Cow::Borrowed(name)
}

#[cfg(test)]
mod tests {
    use super::demangle;

    #[test]
    fn rust_legacy_loses_hash() {
        assert_eq!(
            demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"),
            "core::ptr::drop_in_place"
        );
    }

    #[test]
    fn rust_v0() {
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
    }

    #[test]
    fn cpp() {
        assert_eq!(demangle("_ZN3foo3barEi"), "foo::bar(int)");
    }

    #[test]
    fn c_names_unchanged() {
        assert_eq!(demangle("malloc"), "malloc");
        assert_eq!(demangle("_Zgarbage!"), "_Zgarbage!");
    }
}
