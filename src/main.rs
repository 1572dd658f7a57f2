fn main() -> std::process::ExitCode {
    labgate::cli::main()
}
