package bulkdata

// ForceDrain makes every download asked for ahead drain into the folder,
// so that tests cover reading a drained prefix back.
func ForceDrain(on bool) { forceDrain = on }
