// The console's home: links to the chat and the inbox, and whether the cluster answers.

import {api, setUpSignIn} from "./common.js";

setUpSignIn();
const health = document.getElementById("health");
try {
  await api("GET", "/ok");
  const waiting = await api("POST", "/threads/search", {status: "interrupted", limit: 100});
  const count = waiting.length === 100 ? "100 or more" : waiting.length;
  health.textContent = `The cluster is up. Threads waiting for an approval: ${count}.`;
} catch (error) {
  health.textContent = error.message;
  health.classList.add("error");
}
