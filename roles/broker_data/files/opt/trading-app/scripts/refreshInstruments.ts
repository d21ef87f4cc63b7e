// Lab stand-in for the application's instrument refresh; the lab runner
// (bin/run-script) prints the line below instead of running this file.
// prints: refreshed 20 instruments
console.log("refreshed 20 instruments");
