fn main() {
    bladevisor::cli::main();
}
