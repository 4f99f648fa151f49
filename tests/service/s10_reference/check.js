// Reads S10 numbers, one a line, and writes "valid" or "invalid" for each as
// ts-tracking-number's S10 definition judges it (check digit, service type, country).
"use strict";
const { getTracking, s10 } = require("ts-tracking-number");

let input = "";
process.stdin.setEncoding("ascii");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const verdicts = input.split("\n").filter((line) => line).map(
    (number) => (getTracking(number, [s10]) ? "valid" : "invalid"),
  );
  process.stdout.write(verdicts.join("\n") + "\n");
});
