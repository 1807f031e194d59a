"""The command line: the crnn click group and its commands, the console entry point, config files."""
