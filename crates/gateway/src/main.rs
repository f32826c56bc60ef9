fn main() {
    println!("switchboard: not yet routing");
}
