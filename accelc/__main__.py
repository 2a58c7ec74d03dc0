from accelc.cli.main import entry

entry()
