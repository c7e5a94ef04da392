fn main() {
    let p = std::env::args().nth(1).unwrap();
    let c = l3kit::Checkpoint::open(std::path::Path::new(&p)).unwrap();
    for t in c.tensors() { println!("{} {:?} {:?}", t.name, t.dtype, t.shape); }
}
