// Lab stand-in for the application's token refresh; the lab runner
// (bin/run-script) prints the line below instead of running this file.
// prints: updated access tokens of 2 brokers
console.log("updated access tokens of 2 brokers");
