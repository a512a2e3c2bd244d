// refinery embeds migrations/*.sql at compile time; without this an edited migration would not
// trigger a rebuild and the binary would carry the old text.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
