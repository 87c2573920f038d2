//! Rebuilds control when a migration is added or changed: `embed_migrations!` reads
//! `sql/migrations` at compile time, and cargo does not know to look there by itself.

fn main() {
    println!("cargo:rerun-if-changed=../sql/migrations");
}
